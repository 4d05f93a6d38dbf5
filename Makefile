# The two commands a new user needs (see README):
#   make run   - set up .venv and run the main job
#   make test  - set up .venv with test extras and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# Exact releases: constraints.txt (pyproject.toml holds the ranges a user's install accepts).
PIP_INSTALL := $(BIN)/pip install -c constraints.txt

.PHONY: run test test-install test-cuda docs lint readme clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed-run: $(BIN)/python pyproject.toml constraints.txt
	$(PIP_INSTALL) -e '.[bench,tasks,native,peers]'
	touch $@

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP_INSTALL) -e '.[test]'
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/attnzoo list
	$(BIN)/attnzoo bench speed --suite quick
	$(BIN)/attnzoo bench peers --suite quick
	$(BIN)/attnzoo bench quality --suite quick
	$(BIN)/attnzoo bench cp --seq-lens 1024 --world-size 1,2,4
	$(BIN)/attnzoo report
	$(BIN)/attnzoo docs --db attnzoo.duckdb --out site/

# The report test drives Debian's Chromium (headless). Installed here when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report's browser test"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

test: $(VENV)/.installed chromium
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(MAKE) test-install
	@# pytest exits 5 when it collects no tests: that is a failure here, never a pass.
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo 'pytest collected no tests: failing'; exit 1; fi; exit $$rc

# The wheel and the sdist, installed into a clean venv beside torch 2.13.0 (not the pin) with no
# extras: the README example, no optional package, then the contract tests at the lower bounds.
test-install: $(VENV)/.installed
	$(BIN)/python tools/check_install.py

# Every block on a CUDA device against the CPU (fp32 and bf16) and the bench's CUDA memory path.
# Not part of `make test`. Without CUDA it says so and exits 3: never a silent pass.
test-cuda: $(VENV)/.installed
	CUBLAS_WORKSPACE_CONFIG=:4096:8 $(BIN)/python -m pytest tests/cuda --device cuda $(PYTEST_ARGS)

# The static reference site (site/index.html): one page per mechanism, from the registry and store.
docs: $(VENV)/.installed
	$(BIN)/attnzoo docs --db attnzoo.duckdb --out site/

readme: $(VENV)/.installed
	$(BIN)/python -m attnzoo.readme_table --write README.md --db attnzoo.duckdb

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .artifacts
