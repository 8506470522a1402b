# The two commands of the README, and the recipe of the shipped model.
#   make demo   install, synthesize a small corpus, train tiny briefly, transcribe held-out speech
#   make test   install, run the whole test suite (what CI runs)
# Everything installs into .venv from PyPI; nothing is downloaded at run time.

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
SHARED ?= ../shared/data
RUNS ?= runs
TRAIN_DATA = $(RUNS)/corpus6/train.jsonl $(RUNS)/corpus6/dev.jsonl $(RUNS)/real/fsdd_train.jsonl \
  $(RUNS)/real/sc_train.jsonl $(RUNS)/real/sc_dev.jsonl

.PHONY: demo test lint default-model benchmarks

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/asr demo --workdir $(RUNS)/demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The shipped default model (asr/assets/default): 6 h synthesized requests + the training
# parts of FSDD and Speech Commands, `small` recipe (stage 1, about 70 minutes on 2 CPU cores),
# then two more cosine cycles, each fine-tuned from the last (stage 2: 3,600 steps, 55 minutes;
# stage 3: 2,400 steps time-limited to 34 minutes, it reached 2,338), on the same 2 CPU cores.
default-model: $(BIN)/.installed
	$(BIN)/asr corpus synth --out $(RUNS)/corpus6 --hours 6 --seed 0 --noise-dir $(SHARED)/speech_commands/_silence_
	$(BIN)/asr corpus import fsdd $(SHARED)/fsdd --out $(RUNS)/real/fsdd_train.jsonl --split train
	$(BIN)/asr corpus import fsdd $(SHARED)/fsdd --out $(RUNS)/real/fsdd_test.jsonl --split test
	for s in train dev test; do $(BIN)/asr corpus import speech_commands $(SHARED)/speech_commands --out $(RUNS)/real/sc_$$s.jsonl --split $$s; done
	$(BIN)/asr train --config small --workdir $(RUNS)/default --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(TRAIN_DATA)
	$(BIN)/asr train --config small --workdir $(RUNS)/default_ft --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(TRAIN_DATA) --time-limit 90 \
	  --set init_from=$(RUNS)/default/model steps=3600 peak_lr=1.5e-3 warmup_steps=200 spec_start_step=0 eval_every=900 ckpt_every=200
	$(BIN)/asr train --config small --workdir $(RUNS)/default_ft2 --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(TRAIN_DATA) --time-limit 34 \
	  --set init_from=$(RUNS)/default_ft/model steps=2400 peak_lr=1e-3 warmup_steps=150 spec_start_step=0 eval_every=800 ckpt_every=200
	rm -rf asr/assets/default && mkdir -p asr/assets && cp -r $(RUNS)/default_ft2/model asr/assets/default

benchmarks: $(BIN)/.installed
	$(BIN)/python -m train.benchmarks.train_step
	$(BIN)/python -m train.benchmarks.loss --quick
	$(BIN)/python -m train.benchmarks.transcribe --model default --manifest $(RUNS)/corpus6/test.jsonl $(RUNS)/real/fsdd_test.jsonl $(RUNS)/real/sc_test.jsonl --limit 300
