# Two commands for a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= demo_out

.PHONY: demo test install bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first: the exact pin takes the local CPU build; then the package with its test extras;
# then the compiled kernels.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	@# build the hash-grid CPU kernel now (g++, cached) rather than in the middle of a first fit
	$(PY) -c "from zerolevel.fields.hashgrid_kernel import compiled_kernel_available as ok; \
	print('hash-grid kernel:', 'built' if ok() else 'not built (falls back to PyTorch)')"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zerolevel demo -o $(OUT)

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/raycast.py && $(PY) benchmarks/extraction.py && $(PY) benchmarks/metrics.py && $(PY) benchmarks/renderers.py && $(PY) benchmarks/checks.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
