#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_backup_retention
short_description: Prune the backups M(pg_backup) wrote, keeping the recent and verified ones
description:
  - Reads the manifest of every backup of one database in O(backup_dir) and removes
    the backups that no rule keeps, archive first and manifest last.
  - A backup is kept when it is one of the O(keep_last) newest verified backups, or
    when it is younger than O(keep_days) days. The newest verified backup is always
    kept, whatever the two options say.
  - "Backups are ordered by the start time their manifest records (then its end
    time), never by file names or modification times. A backup counts as verified
    when its manifest says C(verified: true) and its archive is still there."
  - Backups of other databases and files without a manifest are left alone, and so
    are the files of a manifest that cannot be read, which is reported in RV(ignored).
  - It needs no database connection and no psycopg, so it also prunes copies of the
    backups kept on the controller.
options:
  backup_dir:
    description:
      - Folder holding the backups and their manifests.
    type: path
    required: true
  database:
    description:
      - Database whose backups are pruned, as recorded in each manifest.
    type: str
    required: true
  keep_last:
    description:
      - Number of newest verified backups to keep.
      - V(0) keeps none by count, but the newest verified backup is kept anyway.
    type: int
    default: 7
  keep_days:
    description:
      - Backups that started less than this many days ago are kept, verified or not.
      - V(0) keeps none by age.
    type: int
    default: 14
attributes:
  check_mode:
    support: full
    details:
      - Lists in RV(removed) what would be removed, with RV(changed=true) when there is
        anything, and removes nothing.
  diff_mode:
    support: none
    details: The lists of removed and kept backups say what changes.
notes:
  - A backup whose archive is a folder (C(format=directory)) is removed whole.
  - A manifest is only trusted to name its own archive, C(<name>.dump) or
    C(<name>.dir) beside it, so nothing outside O(backup_dir) is ever removed.
seealso:
  - module: pg_backup
author:
  - Reading history release team
"""

EXAMPLES = r"""
- name: Keep a week of backups and at least the seven newest verified ones
  pg_backup_retention:
    backup_dir: /var/backups/reading-history
    database: reading_history
    keep_last: 7
    keep_days: 7
  register: pruned

- name: Show what went
  ansible.builtin.debug:
    msg: "removed {{ pruned.removed | map(attribute='name') | list }}"

- name: See what a shorter retention would remove
  pg_backup_retention:
    backup_dir: /var/backups/reading-history
    database: reading_history
    keep_last: 2
    keep_days: 0
  check_mode: true
"""

RETURN = r"""
removed:
  description: Backups removed, or that would be removed in check mode, newest first.
  returned: always
  type: list
  elements: dict
  sample:
    - name: reading_history_20250101T030000Z
      archive: /var/backups/reading-history/reading_history_20250101T030000Z.dump
      manifest: /var/backups/reading-history/reading_history_20250101T030000Z.manifest.json
      database: reading_history
      started_at: "2025-01-01T03:00:00Z"
      verified: true
      reason: older than 14 days and not among the 7 newest verified
kept:
  description: Backups kept, newest first, each with the rule that kept it.
  returned: always
  type: list
  elements: dict
  sample:
    - name: reading_history_20250115T030000Z
      archive: /var/backups/reading-history/reading_history_20250115T030000Z.dump
      manifest: /var/backups/reading-history/reading_history_20250115T030000Z.manifest.json
      database: reading_history
      started_at: "2025-01-15T03:00:00Z"
      verified: true
      reason: newest verified backup
ignored:
  description: Manifests that could not be read, with the reason; their files are left alone.
  returned: always
  type: list
  elements: dict
  sample:
    - name: broken.manifest.json
      reason: "manifest 'broken.manifest.json' is not valid JSON"
newest_verified:
  description: Name of the newest verified backup of the database, null when there is none.
  returned: always
  type: str
  sample: reading_history_20250115T030000Z
"""

import datetime
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_archive import Backup, list_backups, remove_path


def plan_retention(
    backups: list[Backup], keep_last: int, keep_days: int, now: datetime.datetime
) -> tuple[list[dict], list[tuple[Backup, str]]]:
    """Decide each backup's fate; backups come newest first. Return (kept, to remove)."""
    kept, doomed = [], []
    verified_seen = 0
    cutoff = now - datetime.timedelta(days=keep_days)
    for backup in backups:
        reason = None
        if backup.verified:
            verified_seen += 1
            if verified_seen == 1:
                reason = "newest verified backup"
            elif verified_seen <= keep_last:
                reason = f"among the {keep_last} newest verified"
        if reason is None and keep_days > 0 and backup.started_at > cutoff:
            reason = f"younger than {keep_days} days"
        if reason is None:
            why = (
                "not verified"
                if not backup.verified
                else f"not among the {keep_last} newest verified"
            )
            doomed.append((backup, f"older than {keep_days} days and {why}"))
        else:
            kept.append(backup.describe(reason))
    return kept, doomed


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            backup_dir=dict(type="path", required=True),
            database=dict(type="str", required=True),
            keep_last=dict(type="int", default=7),
            keep_days=dict(type="int", default=14),
        ),
        supports_check_mode=True,
    )
    backup_dir = module.params["backup_dir"]
    database = module.params["database"]
    keep_last = module.params["keep_last"]
    keep_days = module.params["keep_days"]

    if keep_last < 0 or keep_days < 0:
        module.fail_json(msg="keep_last and keep_days must be 0 or more")
    if not os.path.isdir(backup_dir):
        module.fail_json(
            msg=f"cannot prune backups of database '{database}': backup_dir '{backup_dir}' "
            "does not exist or is not a folder"
        )

    try:
        backups, ignored = list_backups(backup_dir)
    except OSError as error:
        module.fail_json(msg=f"cannot list backups in '{backup_dir}': {error}")
    ours = [backup for backup in backups if backup.database == database]
    kept, doomed = plan_retention(ours, keep_last, keep_days, datetime.datetime.now(datetime.UTC))
    newest = next((backup.stem for backup in ours if backup.verified), None)

    removed = []
    for backup, reason in doomed:
        if not module.check_mode:
            try:
                # The archive goes first: a manifest left by an interruption is
                # removed by the next run, while an archive without one would stay.
                remove_path(backup.archive)
                remove_path(backup.manifest_path)
            except OSError as error:
                module.fail_json(
                    msg=f"removing backup '{backup.stem}' of database '{database}' from "
                    f"'{backup_dir}' failed: {error}",
                    removed=removed,
                    kept=kept,
                )
        removed.append(backup.describe(reason))

    verb = "would remove" if module.check_mode else "removed"
    module.exit_json(
        changed=bool(removed),
        msg=f"{verb} {len(removed)} and kept {len(kept)} backups of database '{database}'",
        removed=removed,
        kept=kept,
        ignored=ignored,
        newest_verified=newest,
    )


if __name__ == "__main__":
    main()
