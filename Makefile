# Toolbox for the gVisor code-execution service.  Every target is idempotent and says what it did.
SHELL := /bin/bash
.DEFAULT_GOAL := all

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
ROOTFS_DIR  ?= /var/lib/gvisor-sandbox/rootfs
RUN_DIR     ?= /run/gvisor-sandbox-service
PIDFILE     := $(RUN_DIR)/service.pid
LOGFILE     ?= /var/log/gvisor-sandbox.log
ENV_FILE    ?= .env
PORT        ?= $(or $(SANDBOX_EXECUTOR_MANAGER_PORT),9385)
# runsc comes from tools/setup-runsc.sh (bookworm-backports on bookworm).
# docker.io: only the real-systemd test uses it, with a private dockerd of its own (tests/systemd).
# haproxy: the balancer of deploy/haproxy, used by the multi-node test (tests/cluster).
# dnsmasq-base: the resolver of egress mode (the binary only: the `dnsmasq` package would also run a
# system dnsmasq on port 53). Debian's is built with nftset, which the resolver needs.
# erofs-utils: mkfs.erofs, for the sealed images of a rootfs (orchestrator/host/sealed.py).
APT_PACKAGES := mmdebstrap nftables dnsmasq-base docker.io haproxy erofs-utils
# bookworm's own runsc (0.0~20221219), extracted by `make setup` for the compatibility tests
RUNSC_COMPAT_DIR ?= .cache/runsc-compat
RUNSC_COMPAT := $(RUNSC_COMPAT_DIR)/usr/bin/runsc
# Loads the env file (upstream's SANDBOX_* names) into the shell of a recipe line.
LOAD_ENV    := set -a; [ -f $(ENV_FILE) ] && . ./$(ENV_FILE); set +a; export SANDBOX_ROOTFS_DIR="$${SANDBOX_ROOTFS_DIR:-$(ROOTFS_DIR)}";

# make soak: seconds under load (make test runs it for TEST_SOAK_S), and where soak.json/.png go
SOAK_S      ?= 1800
TEST_SOAK_S ?= 120
SOAK_OUT    ?= soak-results

# systemd is the init system when /run/systemd/system exists (sd_booted(3)); pidof misses it in containers.
UNIT_DIR    ?= /etc/systemd/system
CONF_DIR    ?= /etc/gvisor-sandbox

.PHONY: all setup ensure_env build start stop restart status test test-compat test-unit bench soak doctor logs clean install install-unit uninstall haproxy-config

all: setup build start test  ## set up, build the rootfs, start the service, run the tests

setup:  ## install runsc (bookworm-backports on bookworm), mmdebstrap (npm, systemd-analyze if missing) and the Python environment
	@PYTHON=$(PYTHON) tools/setup-runsc.sh $(RUNSC_COMPAT_DIR)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then echo "setup: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "setup: $(APT_PACKAGES) already installed"; fi
	@if [ ! -x $(PY) ]; then echo "setup: creating $(VENV)"; $(PYTHON) -m venv $(VENV); fi
	@$(PY) -m pip install -q -e '.[test,bench]' && echo "setup: Python dependencies installed in $(VENV)"

ensure_env:  ## create .env from the example if it is missing
	@if [ -f $(ENV_FILE) ]; then echo "ensure_env: $(ENV_FILE) exists"; \
	else cp systemd/gvisor-sandbox.env.example $(ENV_FILE) && echo "ensure_env: created $(ENV_FILE) from the example"; fi

build: setup  ## build (or confirm up to date) the rootfs of every language
	@$(LOAD_ENV) $(PY) -m rootfs_builder build --rootfs-dir "$$SANDBOX_ROOTFS_DIR"

start: setup build  ## start the service in the background on 127.0.0.1:$(PORT)
	@mkdir -p $(RUN_DIR)
	@if [ -f $(PIDFILE) ] && kill -0 $$(cat $(PIDFILE)) 2>/dev/null; then \
	  echo "start: already running (pid $$(cat $(PIDFILE)))"; exit 0; fi; \
	$(LOAD_ENV) setsid $(PY) -m orchestrator serve >>$(LOGFILE) 2>&1 </dev/null & echo $$! > $(PIDFILE); \
	for i in $$(seq 1 300); do \
	  if $(PY) -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$(PORT)/healthz', timeout=1)" 2>/dev/null; then \
	    echo "start: service up on http://127.0.0.1:$(PORT) (pid $$(cat $(PIDFILE)), log $(LOGFILE))"; exit 0; fi; \
	  if ! kill -0 $$(cat $(PIDFILE)) 2>/dev/null; then echo "start: the service exited; last log lines:"; tail -n 20 $(LOGFILE); rm -f $(PIDFILE); exit 1; fi; \
	  sleep 0.2; done; echo "start: no answer on /healthz after 60 s"; exit 1

stop:  ## stop the background service (SIGTERM, then wait)
	@if [ -f $(PIDFILE) ] && kill -0 $$(cat $(PIDFILE)) 2>/dev/null; then \
	  pid=$$(cat $(PIDFILE)); kill -TERM $$pid; \
	  for i in $$(seq 1 300); do kill -0 $$pid 2>/dev/null || break; sleep 0.1; done; \
	  if kill -0 $$pid 2>/dev/null; then kill -KILL $$pid; echo "stop: killed pid $$pid (no exit after 30 s)"; \
	  else echo "stop: stopped pid $$pid"; fi; \
	else echo "stop: not running"; fi; rm -f $(PIDFILE)

restart: stop start  ## stop, then start

status:  ## is the service answering?
	@$(PY) -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$(PORT)/healthz', timeout=2).read().decode())" \
	  || echo "status: not answering on port $(PORT)"

test: setup  ## run every test (unit, host, real runsc, end to end, chaos, fuzzing), the compatibility subset, a 2-minute soak
	$(PY) -m pytest -ra $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-compat
	@$(MAKE) --no-print-directory soak SOAK_S=$(TEST_SOAK_S)

# The contract, limits and isolation tests again, booted and warm, against bookworm's own runsc
# (0.0~20221219: no snapshots).  REQUIRE_RUNSC=1 makes a missing build an error on bookworm.
COMPAT_TESTS ?= tests/runsc/test_python.py tests/runsc/test_nodejs.py tests/runsc/test_limits.py tests/runsc/test_seccomp.py
test-compat: setup  ## the real-runsc compatibility subset against the 2022 runsc build (make setup extracts it)
	@if [ -x $(RUNSC_COMPAT) ]; then \
	  echo "test-compat: $(COMPAT_TESTS) against $$($(RUNSC_COMPAT) --version | head -n1)"; \
	  SANDBOX_RUNSC=$(abspath $(RUNSC_COMPAT)) $(PY) -m pytest -ra -k "not restored" $(COMPAT_TESTS); \
	elif [ "$$REQUIRE_RUNSC" = 1 ] && grep -qs '^VERSION_CODENAME=bookworm' /etc/os-release; then \
	  echo "test-compat: no 2022 runsc at $(RUNSC_COMPAT) (make setup extracts it)"; exit 1; \
	else echo "test-compat: skipped (no 2022 runsc build at $(RUNSC_COMPAT))"; fi

test-unit: setup  ## only the unit tests (no root, no runsc)
	$(PY) -m pytest -ra tests/unit $(PYTEST_ARGS)

bench: setup  ## ops benchmark (BENCH_ARGS: --only sustained, --compare-url URL, ...): table + bench-results/bench.json and .png
	@$(LOAD_ENV) $(PY) -m orchestrator.bench $(BENCH_ARGS)

haproxy-config:  ## HAProxy config for NODES="10.0.0.11:9385 10.0.0.12:9385" (HAPROXY_ARGS: --bind, --agent-port, --maxconn); timeouts from .env
	@if [ -z "$(NODES)" ]; then echo 'haproxy-config: give the nodes, e.g. make haproxy-config NODES="10.0.0.11:9385 10.0.0.12:9385"'; exit 2; fi
	@$(LOAD_ENV) $(PY) deploy/haproxy/render.py $(NODES) $(HAPROXY_ARGS)

soak: setup  ## the real service under a mixed closed-loop load of every outcome for SOAK_S s (default 1800): 0 unexpected answers, flat RSS and FDs, nothing left; $(SOAK_OUT)/soak.json and soak.png
	@$(LOAD_ENV) $(PY) -m orchestrator.soak --duration $(SOAK_S) --out $(SOAK_OUT) $(SOAK_ARGS)

doctor: setup  ## check this host can run sandboxes; prints the fix for every failure
	@$(LOAD_ENV) $(PY) -m orchestrator doctor

logs:  ## follow the service log (the journal when installed as a unit)
	@if [ -f $(UNIT_DIR)/gvisor-sandbox.service ] && [ -d /run/systemd/system ]; then journalctl -u gvisor-sandbox -f; \
	else tail -n 100 -F $(LOGFILE); fi

clean: stop  ## stop, then remove every sandbox, cgroup, namespace and directory of ours, and caches
	@if [ -x $(PY) ]; then $(LOAD_ENV) $(PY) -m orchestrator reap; fi
	@rm -rf .pytest_cache .hypothesis bench-results soak-results && find . -name __pycache__ -type d -prune -exec rm -rf {} + && echo "clean: removed caches (the venv and the rootfs stay; rm -rf $(VENV) $(ROOTFS_DIR) to rebuild them)"

install: setup build install-unit  ## install the systemd unit (pointing at this checkout) and the env file

install-unit:  ## only the unit and env file part of install (the venv and rootfs must be there)
	@mkdir -p $(CONF_DIR)
	@if [ -f $(CONF_DIR)/gvisor-sandbox.env ]; then echo "install: keeping $(CONF_DIR)/gvisor-sandbox.env"; \
	else install -m 0640 systemd/gvisor-sandbox.env.example $(CONF_DIR)/gvisor-sandbox.env && echo "install: wrote $(CONF_DIR)/gvisor-sandbox.env"; fi
	@sed 's|@INSTALL_DIR@|$(CURDIR)|g' systemd/gvisor-sandbox.service.in > $(UNIT_DIR)/gvisor-sandbox.service && echo "install: wrote $(UNIT_DIR)/gvisor-sandbox.service"
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload && systemctl enable gvisor-sandbox && echo "install: enabled; start it with systemctl start gvisor-sandbox"; \
	else echo "install: systemd is not running here; the unit is in place for the next boot"; fi

uninstall:  ## remove the systemd unit (the env file in $(CONF_DIR) stays)
	@if [ -d /run/systemd/system ] && [ -f $(UNIT_DIR)/gvisor-sandbox.service ]; then systemctl disable --now gvisor-sandbox || true; fi
	@rm -f $(UNIT_DIR)/gvisor-sandbox.service && echo "uninstall: removed $(UNIT_DIR)/gvisor-sandbox.service"
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
