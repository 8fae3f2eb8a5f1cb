"""Make the repository's modules and module_utils importable for the unit tests."""

from module_harness import install_module_paths

install_module_paths()
