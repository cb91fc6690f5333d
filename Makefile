# tessera: fresh-machine entry points.
#   make setup  installs what is missing (Debian GDAL, ONNX Runtime CPU library, test venv, test data)
#   make test   setup + format check + clippy + every test
#   make demo   setup + the main job on bundled sample data
#   make bench  setup + benchmarks, results written to bench/results/
SHELL := /bin/bash
CARGO ?= cargo
DEMO_OUT ?= demo-output

.PHONY: setup build release test lint demo bench clean

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build

release: setup
	$(CARGO) build --release

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	python3 tools/export/tests/check_imports.py

test: lint
	$(CARGO) test

demo: release
	@bash scripts/demo.sh "$(DEMO_OUT)"

bench: release
	@bash bench/run.sh

clean:
	$(CARGO) clean
	rm -rf $(DEMO_OUT) bench/results
