# One entry point for every operation on the lab and for the tests.
# `make deploy` and `make test` set everything up first; see README.md.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
INVENTORY ?= inventories/lab
# Operations on the lab start it first; other environments only need the set-up.
PREPARE := $(if $(filter inventories/lab,$(INVENTORY)),lab,setup)

export CONTAINERS_CONF := $(CURDIR)/.lab/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup lab lab-down provision deploy backup migrate verify rollback restore maintenance test

setup:
	tools/setup

lab: setup
	$(BIN)/ansible-playbook playbooks/lab.yml

lab-down:
	$(BIN)/ansible-playbook playbooks/lab.yml -e lab_containers_state=absent

provision: $(PREPARE)
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/provision.yml

deploy: provision
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/deploy.yml
	@echo "The reading-history service answers at http://127.0.0.1:8080"
	@echo "and at https://localhost:8443 (its certificate: .lab/lb-certificate.pem)"

backup migrate verify rollback: $(PREPARE)
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/$@.yml

# Replaces the database with its newest verified backup: it asks for the database's
# name as confirmation, e.g. make restore CONFIRM=reading_history.
restore: $(PREPARE)
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/restore.yml -e db_restore_confirm=$(CONFIRM)

# Puts the maintenance page up or takes it down: make maintenance STATE=on (or off).
maintenance: $(PREPARE)
	$(if $(filter on off,$(STATE)),,$(error say STATE=on or STATE=off))
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/maintenance.yml -e maintenance=$(STATE)

test: setup
	tools/run-tests
