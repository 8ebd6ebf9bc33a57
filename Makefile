# ahvlite: `make demo` and `make test` work as root on a fresh Debian 12 machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
AHV    := $(BIN)/ahvlite
DEMO_LAB ?= demo

# Debian packages ahvlite needs on a host and for the lab (one list, installed only
# when something is missing, so `make setup` is fast the second time).
DEBS := libvirt-daemon-system libvirt-clients libvirt-dev pkg-config \
	qemu-system-x86 qemu-utils openvswitch-switch openvswitch-common \
	swtpm swtpm-tools ovmf zookeeper openssh-server openssh-client \
	iproute2 ethtool util-linux kmod procps iputils-ping cpio busybox-static \
	mtools dosfstools syslinux syslinux-common libxml2-utils ruby \
	tgt qemu-block-extra nfs-common nfs-ganesha nfs-ganesha-vfs libnfs-utils \
	dnsmasq-base tcpdump \
	python3 python3-venv python3-dev gcc make

.PHONY: help setup debs venv guest demo test test-unit explore test-functional test-lab lint bench clean

help:
	@echo "make demo   - install what is missing, build a 3-host lab, boot guests, ping across hosts, VMs on a managed network (IPAM + DHCP), migrate, maintenance, HA after a host failure"
	@echo "make test   - install what is missing, run the whole test suite (unit, functional, lab)"
	@echo "make setup  - only install (Debian packages, .venv, lab guest image)"
	@echo "make lint   - ruff, mypy, vulture (never-called code) and ansible-lint"
	@echo "make explore - property tests on fresh random examples (EXPLORE_ROUNDS=10)"
	@echo "make bench  - benchmarks (ratios against a peer measured in the same run)"

setup: debs venv guest

debs:
	@missing=$$(for p in $(DEBS); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

guest: venv
	$(AHV) lab guest-image

demo: setup
	@$(AHV) lab down --name $(DEMO_LAB) >/dev/null 2>&1 || true
	$(AHV) lab up --hosts 3 --name $(DEMO_LAB)
	$(AHV) lab demo --name $(DEMO_LAB)
	@set -e; \
	disk=$$($(AHV) lab status --name $(DEMO_LAB) --json | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["guest"]["disk"])'); \
	echo "== the CLI is a client of the cluster's API, as an admin's machine: ahvlite lab env"; \
	eval "$$($(AHV) lab env --name $(DEMO_LAB))"; \
	$(AHV) controller status; \
	$(AHV) host list; \
	echo "== a managed network: IPAM hands out addresses, each host answers its VMs' DHCP"; \
	$(AHV) net create blue --vlan 10 --subnet 10.10.0.0/24 --gateway 10.10.0.1 \
		--pool 10.10.0.100-10.10.0.199 --dns 10.10.0.2 --domain lab.example --mtu 1400; \
	echo "== image, VM, versioned template, deploy 3 VMs on blue"; \
	$(AHV) image import "$$disk" guest; \
	$(AHV) vm create demo-src --memory-mib 128 --disk guest --nic blue; \
	$(AHV) template create demo-tp --from-vm demo-src; \
	$(AHV) vm delete demo-src; \
	$(AHV) template deploy demo-tp --count 3 --prefix demo-vm; \
	$(AHV) net show blue; \
	ips=$$($(AHV) net show blue --json | $(BIN)/python -c 'import json,sys; print(*(a["ip"] for a in json.load(sys.stdin)["allocations"]))'); \
	echo "== demo-vm1 pings its peers by the addresses IPAM gave them: $$ips"; \
	for i in $$(seq 60); do \
		$(AHV) vm console demo-vm1 --timeout 10 \
			--command 'test -s /run/ahvlite-dhcp-lease' >/dev/null 2>&1 && break; sleep 2; \
	done; \
	$(AHV) vm console demo-vm1 --timeout 60 \
		--command "ip -4 -o addr show dev eth0; for a in $$ips; do ping -c 2 -W 2 \$$a || exit 1; done"; \
	$(AHV) vm list; \
	echo "== live migration with its progress bar, then maintenance mode"; \
	$(AHV) vm create demo-mig --memory-mib 128 --disk guest --nic br0 --start; \
	$(AHV) vm migrate demo-mig; \
	mhost=$$($(AHV) vm show demo-mig --json | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["host"])'); \
	$(AHV) host maintenance enter "$$mhost" --wait; \
	$(AHV) host maintenance show; \
	$(AHV) vm list; \
	$(AHV) host maintenance exit "$$mhost" --restore; \
	echo "== HA: a host loses power; its VMs restart on the others"; \
	$(AHV) ha show; \
	$(AHV) lab kill --name $(DEMO_LAB) --watch-ha
	@echo "The lab keeps running: 'eval \"\$$($(AHV) lab env --name $(DEMO_LAB))\"' points" \
	      "the CLI at it ('$(AHV) vm list'); '$(AHV) lab power-on HOST --name $(DEMO_LAB)'" \
	      "brings the killed host back; '$(AHV) lab down --name $(DEMO_LAB)' removes it."

# Two passes. First every module but the HA drills, on TEST_WORKERS parallel workers,
# one module per worker at a time (a lab module builds its lab once), the longest first
# (tests/conftest.py). Then the drills whose promises have deadlines (a healthy host
# rides out a ZooKeeper election, fencing before restart, I/O pauses; DHCP while the
# leader's host is off), alone: on 2 cores a second lab beside them starves ZooKeeper
# and the agents of CPU.
TEST_WORKERS ?= 2
SERIAL_TESTS := tests/lab/test_ha.py tests/lab/test_ha_split.py tests/lab/test_ipam.py \
	tests/lab/test_cluster_truth.py tests/lab/test_iscsi.py
test: setup
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=25 $(addprefix --ignore=,$(SERIAL_TESTS)) tests
	$(BIN)/pytest --durations=15 $(SERIAL_TESTS)

test-unit: venv
	$(BIN)/pytest tests/unit

# Property tests on fresh random examples, several rounds (the gate runs fixed ones).
EXPLORE_ROUNDS ?= 10
explore: venv
	for i in $$(seq $(EXPLORE_ROUNDS)); do \
	  HYPOTHESIS_PROFILE=explore $(BIN)/pytest -q -p no:cacheprovider tests/unit || exit 1; \
	done

test-functional: setup
	$(BIN)/pytest tests/functional

test-lab: setup
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile tests/lab

lint: venv
	$(BIN)/ruff check ahvlite tests bench
	$(BIN)/mypy ahvlite
	@dead=$$($(BIN)/vulture | grep -Ev 'unused (variable|attribute|import)'); \
	if [ -n "$$dead" ]; then echo "$$dead"; \
		echo "never called: delete it, or add it to [tool.vulture] ignore_names with why"; exit 1; fi
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ansible-lint -q -c playbooks/.ansible-lint playbooks/

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
