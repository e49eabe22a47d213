# ecs-image — build, test and lint.
GO       ?= go
BIN      ?= bin
# Releases are annotated tags vX.Y.Z (make release-tag); between tags
# VERSION is vX.Y.Z-N-gCOMMIT, with -dirty for a modified tree.
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DATE     ?= $(shell git log -1 --format=%cI 2>/dev/null)
LDFLAGS  := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/go/bin

# Debian packages ecs-image needs at build and test time.
DEB_PACKAGES := \
	qemu-system-x86 qemu-system-common qemu-utils ovmf \
	mmdebstrap debootstrap fdisk e2fsprogs dosfstools mtools grub-pc-bin \
	xorriso genisoimage cloud-image-utils xz-utils bzip2 \
	zbar-tools poppler-utils gnupg duplicity openssh-client sudo \
	postgresql python3-boto3 python3-paramiko openssh-server \
	ca-certificates curl git make python3-dotenv python3-yaml \
	prometheus prometheus-alertmanager prometheus-node-exporter redis-server memcached nginx systemd \
	gcc libc6-dev
# Vagrant and libvirt for the box tests (slow; CI installs them too).
DEB_VAGRANT := vagrant vagrant-libvirt libvirt-daemon libvirt-daemon-driver-qemu \
	libvirt-clients libvirt-daemon-system dnsmasq-base ebtables iptables iproute2

# The ECS stand-in images (container tarballs: ecs/ecs, ecs/pdfas, ecs/mocca)
# the appliance template's stack bakes in; one go run writes all three.
STANDIN_IMAGES := $(addprefix templates/files/images/,ecs-standin.tar pdfas-standin.tar mocca-standin.tar)

# Let's Encrypt's ACME test server for the ACME tests (pebbletest.Version).
PEBBLE_VERSION := v2.10.1

.PHONY: all deps deps-vagrant deps-bench build test integration e2e lint bench appliance clean release-tag deb

all: build

deps:
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEB_PACKAGES)
	@# nginx is only for TestNginxServesACMEChallenge, which runs its own
	@# unprivileged server on loopback ports: stop and disable the system
	@# server the package may have started, so nothing listens on :80/:443.
	systemctl disable --now nginx >/dev/null 2>&1 || service nginx stop >/dev/null 2>&1 || true
	$(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
	$(GO) install github.com/letsencrypt/pebble/v2/cmd/pebble@$(PEBBLE_VERSION) github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv@$(PEBBLE_VERSION)
	$(GO) mod download

deps-vagrant:
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEB_VAGRANT)

# Packer 1.6.6 (Debian's package), only for the side-by-side benchmark
# bench/compare.sh; not needed to build or test.
deps-bench:
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends packer

# bin/ecs-image is the small front program (-tags ecsfront: version and
# cidata in a few milliseconds), which executes the complete program
# bin/libexec/ecs-image for every other command (cmd/ecs-image/main_front.go).
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/libexec/ecs-image ./cmd/ecs-image
	CGO_ENABLED=0 $(GO) build -tags ecsfront -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ecs-image ./cmd/ecs-image
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ecs-agent ./cmd/ecs-agent

# Unit tests: fast, no VM. TestRepoTemplates validates
# templates/ecs-appliance.yml, which needs bin/ecs-agent and the stand-in images.
# TESTFLAGS adds go test flags to test and integration (CI: -json).
test: build $(STANDIN_IMAGES)
	$(GO) test -count=1 $(TESTFLAGS) ./...

# VM tests: real QEMU boots (TCG here), real cloud-init, real qemu-img.
integration: build
	$(GO) test -count=1 -tags integration -p 1 -timeout 80m -v $(TESTFLAGS) ./integration/...

# The appliance end to end (issue 5): build, boot, verify. Slow under TCG.
e2e: build
	$(GO) test -count=1 -tags integration -p 1 -timeout 120m -v -run 'TestAppliance' ./integration/...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags integration ./integration/...
	staticcheck ./...
	CGO_ENABLED=0 $(GO) build -tags ecsfront -o /dev/null ./cmd/ecs-image
	staticcheck -tags ecsfront -tests=false ./cmd/ecs-image
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run 'go mod tidy'"; exit 1; }
	bash scripts/check-large-files.sh

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3s ./cidata/ ./bench/...

# The reference appliance (root, after `make deps`): the local Debian base
# (cached, Debian 13), the ECS stand-in images, templates/ecs-appliance.yml built into
# $(APPLIANCE_OUT)/ (stages cached), a demo env.yml (kept when it exists) and
# its seed ISO. Prints the command that boots it. See docs/e2e.md.
APPLIANCE_OUT     ?= out
APPLIANCE_VARIANT ?= prod
DEMO_DOMAIN       ?= demo.ecs.test

$(STANDIN_IMAGES) &: $(wildcard integration/testimage/*.go integration/testimage/standin/*.go integration/testimage/cmd/testimage/*.go)
	@mkdir -p templates/files/images
	$(GO) run ./integration/testimage/cmd/testimage -standins templates/files/images

appliance: build $(STANDIN_IMAGES)
	$(BIN)/ecs-image base build --suite trixie
	$(BIN)/ecs-image build templates/ecs-appliance.yml -o $(APPLIANCE_OUT) --variant $(APPLIANCE_VARIANT)
	@mkdir -p $(APPLIANCE_OUT)/demo && chmod 0700 $(APPLIANCE_OUT)/demo
	@if [ -f $(APPLIANCE_OUT)/demo/env.yml ]; then echo "keeping $(APPLIANCE_OUT)/demo/env.yml"; \
	else $(BIN)/ecs-image env create $(DEMO_DOMAIN) -o $(APPLIANCE_OUT)/demo/env.yml; fi
	$(BIN)/ecs-image cidata -e $(APPLIANCE_OUT)/demo/env.yml -o $(APPLIANCE_OUT)/demo/seed.iso
	@echo
	@echo "appliance: $$(ls $(APPLIANCE_OUT)/ecs-appliance-$(APPLIANCE_VARIANT).* | tr '\n' ' ')"
	@echo "demo env:  $(APPLIANCE_OUT)/demo/env.yml (secrets, mode 0600)"
	@echo "seed ISO:  $(APPLIANCE_OUT)/demo/seed.iso"
	@echo "boot it:   $(BIN)/ecs-image test $(APPLIANCE_OUT)/ecs-appliance-$(APPLIANCE_VARIANT).qcow2 --env $(APPLIANCE_OUT)/demo/env.yml"

# The Debian package dist/ecs-image_<version>_amd64.deb (dpkg-deb): the
# static binaries, man pages, bash/zsh/fish completions; prints its path.
deb: build
	@bash scripts/deb.sh $(BIN) dist $(VERSION)

# Tag a release: make release-tag TAG=v1.2.0 (a clean tree; then push the tag).
release-tag:
	@case "$(TAG)" in v[0-9]*.[0-9]*.[0-9]*) ;; *) echo "usage: make release-tag TAG=vX.Y.Z"; exit 2;; esac
	@test -z "$$(git status --porcelain)" || { echo "release-tag: the work tree has changes; commit them first"; exit 1; }
	git tag -a $(TAG) -m "ecs-image $(TAG)"
	@echo "tagged $(TAG): push it with 'git push origin $(TAG)'; 'make build' now says $(TAG)"

clean:
	rm -rf $(BIN)
