# The two commands a new user needs (see README):
#   make run   - set up .venv and run the main job
#   make test  - set up .venv with test extras and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint readme clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed-run: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e '.[peers]'
	touch $@

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e '.[test]'
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/attnzoo list
	$(BIN)/attnzoo bench speed --suite quick
	$(BIN)/attnzoo bench peers --suite quick
	$(BIN)/attnzoo bench quality --suite quick
	$(BIN)/attnzoo bench cp --seq-lens 1024 --world-size 1,2,4
	$(BIN)/attnzoo report

# The report test drives Debian's Chromium (headless). Installed here when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report's browser test"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

test: $(VENV)/.installed chromium
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	@# pytest exits 5 when it collects no tests: that is a failure here, never a pass.
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo 'pytest collected no tests: failing'; exit 1; fi; exit $$rc

readme: $(VENV)/.installed
	$(BIN)/python -m attnzoo.readme_table --write README.md --db attnzoo.duckdb

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .artifacts
