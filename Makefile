# Set-up and everyday commands. `make mount` and `make test` each install what is missing first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stashfs-installed
MOUNTPOINT ?= $(HOME)/stashfs
BACKEND ?=

.PHONY: deps sysdeps mount umount status test bench clean install

deps: sysdeps $(STAMP)

sysdeps:
	@sh scripts/ensure-system-deps.sh

# Reinstall only when the package metadata changes (the install is editable).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

mount: deps
	@mkdir -p $(MOUNTPOINT)
	$(BIN)/mountctl mount $(MOUNTPOINT) $(if $(BACKEND),--backend $(BACKEND))
	@echo "stashfs is mounted at $(MOUNTPOINT) (make umount to unmount)"

umount: deps
	$(BIN)/mountctl umount $(MOUNTPOINT)

status: deps
	$(BIN)/mountctl status

# mountctl and the fstab helper (stashfs) for every user and for mount(8), which runs helpers with
# the default PATH only: links into $(PREFIX)/bin to this checkout's .venv (docs/operations.md).
PREFIX ?= /usr/local
install: deps
	install -d $(DESTDIR)$(PREFIX)/bin
	ln -sfn $(abspath $(BIN))/mountctl $(DESTDIR)$(PREFIX)/bin/mountctl
	ln -sfn $(abspath $(BIN))/stashfs $(DESTDIR)$(PREFIX)/bin/stashfs

test: deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: deps
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
