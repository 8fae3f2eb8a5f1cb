# One entry point for every operation on the lab and for the tests.
# `make deploy` and `make test` set everything up first; see README.md.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
INVENTORY ?= inventories/lab

export CONTAINERS_CONF := $(CURDIR)/.lab/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup lab lab-down deploy backup migrate verify rollback test

setup:
	tools/setup

lab: setup
	$(BIN)/ansible-playbook playbooks/lab.yml

lab-down:
	$(BIN)/ansible-playbook playbooks/lab.yml -e lab_containers_state=absent

deploy: lab
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/deploy.yml
	@echo "The reading-history service answers at http://127.0.0.1:8080"

backup migrate verify rollback:
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/$@.yml

test: setup
	tools/run-tests
