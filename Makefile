# Keyline: the two commands of the README.
#   make run   - build and run the gateway on embedded defaults
#   make test  - build everything and run every test (unit, property, end-to-end)

CARGO ?= cargo

.PHONY: run test deps test-deps build lint fuzz

deps:
	@scripts/install-deps.sh

test-deps:
	@scripts/install-deps.sh --test

build: deps
	$(CARGO) build --workspace --bins

run: deps
	$(CARGO) run --release -p keyline-gatewayd --

# The end-to-end tests start the real binaries, so build them first.
# (scripts/run-tests runs the test binaries two at a time; see README.)
test: test-deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
	scripts/fuzz.sh 20

# Every fuzz target for FUZZ_SECONDS each (default 15 minutes), two at a time.
FUZZ_SECONDS ?= 900
fuzz: test-deps
	scripts/fuzz.sh $(FUZZ_SECONDS)

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Debian packages keyline-gateway, keyline-agent, keyline-directory for this
# machine's architecture, into target/debian/ (see packaging/README.md).
.PHONY: deb
deb:
	CARGO="$(CARGO)" packaging/build-debs.sh
