# Install, uninstall and Debian package targets. Included from the top
# Makefile (`include packaging/packaging.mk`), which defines GO, PREFIX,
# DESTDIR, BINDIR, VERSION, LDFLAGS and the `build` target (./synguard).
#
# Layout (PREFIX=/usr):
#   $(BINDIR)/synguard
#   $(UNITDIR)/synguard.service            ExecStart rewritten to $(BINDIR)
#   $(SYSUSERSDIR)/synguard.conf           the synguard group (socket access)
#   $(SYSCONFDIR)/synguard/synguard.yaml   never overwritten once edited
#   $(SYSCONFDIR)/synguard/credentials/    alert secrets, LoadCredential=
#   $(MANDIR)/man1/synguard*.1.gz
#   bash, zsh and fish completions

GO          ?= go
PREFIX      ?= /usr
DESTDIR     ?=
BINDIR      ?= $(PREFIX)/bin
VERSION     ?= dev
# The unit reads /etc/synguard/synguard.yaml whatever PREFIX is.
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
MANDIR      ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
# Debian's zsh searches vendor-completions under /usr, site-functions under
# /usr/local.
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/$(if $(filter /usr,$(PREFIX)),vendor-completions,site-functions)
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
DISTDIR     ?= dist
# Debian versions must start with a digit and use "-" only before the
# revision: v1.2.3 -> 1.2.3, 1.2.3-4-gabc -> 1.2.3+4+gabc, abc123 -> 0.0.0~abc123.
DEB_VERSION ?= $(shell echo '$(VERSION)' | sed -E 's/^v//; s/-/+/g; /^[0-9]/!s/^/0.0.0~/')
DEB_ARCH    ?= $(shell $(GO) env GOARCH)

SG_CONF     := $(DESTDIR)$(SYSCONFDIR)/synguard

.PHONY: man
man: build ## Generate man pages into build/man (gzipped) from the binary's commands.
	rm -rf build/man && mkdir -p build/man
	./synguard gendocs --man build/man
	gzip -9nf build/man/*.1

.PHONY: completions
completions: build ## Generate bash, zsh and fish completions into build/completions.
	rm -rf build/completions
	./synguard gendocs --completions build/completions

.PHONY: install
install: build man completions ## Install binary, unit, config (kept if edited), man pages, completions (DESTDIR, PREFIX).
	install -D -m 0755 synguard $(DESTDIR)$(BINDIR)/synguard
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed 's|/usr/bin/synguard|$(BINDIR)/synguard|g' systemd/synguard.service > $(DESTDIR)$(UNITDIR)/synguard.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/synguard.service
	install -D -m 0644 packaging/sysusers.conf $(DESTDIR)$(SYSUSERSDIR)/synguard.conf
	install -d -m 0755 $(SG_CONF)
	install -d -m 0700 $(SG_CONF)/credentials
	@if [ ! -e $(SG_CONF)/synguard.yaml ]; then \
		install -m 0644 systemd/synguard.yaml $(SG_CONF)/synguard.yaml; \
	elif cmp -s systemd/synguard.yaml $(SG_CONF)/synguard.yaml; then :; \
	else \
		install -m 0644 systemd/synguard.yaml $(SG_CONF)/synguard.yaml.new; \
		echo "install: kept your edited $(SG_CONF)/synguard.yaml; the new default is synguard.yaml.new"; \
	fi
	install -d -m 0755 $(DESTDIR)$(MANDIR)/man1
	install -m 0644 build/man/*.1.gz $(DESTDIR)$(MANDIR)/man1/
	install -D -m 0644 build/completions/synguard.bash $(DESTDIR)$(BASHCOMPDIR)/synguard
	install -D -m 0644 build/completions/_synguard $(DESTDIR)$(ZSHCOMPDIR)/_synguard
	install -D -m 0644 build/completions/synguard.fish $(DESTDIR)$(FISHCOMPDIR)/synguard.fish
	@if [ -z "$(DESTDIR)" ]; then \
		getent group synguard >/dev/null || groupadd --system synguard || true; \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi; \
		echo "install: done; 'systemctl enable --now synguard' starts it in observe mode"; \
	fi

.PHONY: uninstall
uninstall: ## Stop, detach XDP, remove what install put in place; an edited config is kept.
	@if [ -z "$(DESTDIR)" ]; then \
		if [ -d /run/systemd/system ]; then systemctl disable --now synguard.service 2>/dev/null || true; fi; \
		if [ -x $(BINDIR)/synguard ]; then \
			$(BINDIR)/synguard cleanup --force --config $(SYSCONFDIR)/synguard/synguard.yaml >/dev/null 2>&1 || true; \
		fi; \
	fi
	rm -f $(DESTDIR)$(BINDIR)/synguard
	rm -f $(DESTDIR)$(UNITDIR)/synguard.service
	rm -f $(DESTDIR)$(SYSUSERSDIR)/synguard.conf
	rm -f $(DESTDIR)$(MANDIR)/man1/synguard.1.gz $(DESTDIR)$(MANDIR)/man1/synguard-*.1.gz
	rm -f $(DESTDIR)$(BASHCOMPDIR)/synguard $(DESTDIR)$(ZSHCOMPDIR)/_synguard $(DESTDIR)$(FISHCOMPDIR)/synguard.fish
	rm -f $(SG_CONF)/synguard.yaml.new
	@if [ -e $(SG_CONF)/synguard.yaml ]; then \
		if cmp -s systemd/synguard.yaml $(SG_CONF)/synguard.yaml; then rm -f $(SG_CONF)/synguard.yaml; \
		else echo "uninstall: kept your edited $(SG_CONF)/synguard.yaml"; fi; \
	fi
	rmdir $(SG_CONF)/credentials 2>/dev/null || true
	rmdir $(SG_CONF) 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi

.PHONY: deb
deb: build man completions ## Build dist/synguard_<version>_<arch>.deb with nfpm.
	mkdir -p $(DISTDIR)
	SYNGUARD_DEB_VERSION='$(DEB_VERSION)' SYNGUARD_DEB_ARCH='$(DEB_ARCH)' \
		$(GO) tool nfpm package --config packaging/nfpm.yaml --packager deb --target $(DISTDIR)/synguard_$(DEB_VERSION)_$(DEB_ARCH).deb
