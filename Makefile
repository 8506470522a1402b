# The two commands of the README, and the recipe of the shipped model.
#   make demo   install, train a tiny digits-and-commands recognizer for minutes, show it learn
#   make test   install, run the whole test suite in two worker processes (what CI runs)
# Everything installs into .venv from PyPI; nothing is downloaded at run time.

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
SHARED ?= ../shared/data
RUNS ?= runs
REAL_DATA = $(RUNS)/real/fsdd_train.jsonl $(RUNS)/real/sc_train.jsonl $(RUNS)/real/sc_dev.jsonl
TRAIN_DATA = $(RUNS)/corpus6/train.jsonl $(RUNS)/corpus6/dev.jsonl $(REAL_DATA)
TRAIN_DATA4 = $(RUNS)/corpus6/train.jsonl $(RUNS)/corpus6/dev.jsonl $(RUNS)/corpus6_s1/train.jsonl \
  $(RUNS)/corpus6_s2/train.jsonl $(REAL_DATA)
TRAIN_DATA5 = $(RUNS)/corpus6/train.jsonl $(RUNS)/corpus6/dev.jsonl $(RUNS)/corpus6_s1/train.jsonl \
  $(RUNS)/corpus6_s2/train.jsonl $(RUNS)/corpus6_s3r/train.jsonl $(REAL_DATA)
TRAIN_DATA6 = $(RUNS)/corpus6/train.jsonl $(RUNS)/corpus6/dev.jsonl $(RUNS)/corpus6_s1/train.jsonl \
  $(RUNS)/corpus6_s2/train.jsonl $(RUNS)/corpus6_s3r/train.jsonl $(RUNS)/corpus6_s4r/train.jsonl $(REAL_DATA)
TRAIN_DATA7 = $(RUNS)/corpus12_s11w/train.jsonl $(RUNS)/corpus12_s11w/dev.jsonl \
  $(RUNS)/real/fsdd_train.jsonl $(RUNS)/real/sc_train.jsonl
TRAIN_DATA8 = $(TRAIN_DATA6) $(RUNS)/corpus6_s6w/train.jsonl
BIAS_DATA = $(RUNS)/corpus6/train.jsonl $(RUNS)/corpus6/dev.jsonl $(RUNS)/corpus9/train.jsonl $(RUNS)/corpus9/dev.jsonl \
  $(RUNS)/corpus6_s6w/train.jsonl $(RUNS)/kokoro9/train.jsonl $(RUNS)/kokoro9/dev.jsonl \
  $(RUNS)/world9_fsdd/train.jsonl $(RUNS)/world9_sc/train.jsonl $(REAL_DATA)
BIAS_SET = spec_start_step=0 real_phrases=0.3 noise_pad_prob=0.3 noise_only=0.03 bias_dim=128 bias_heads=4
TRAIN_DATA9 = $(RUNS)/corpus6/train.jsonl $(RUNS)/corpus6/dev.jsonl $(RUNS)/corpus9/train.jsonl $(RUNS)/corpus9/dev.jsonl \
  $(RUNS)/kokoro9/train.jsonl $(RUNS)/kokoro9/dev.jsonl $(RUNS)/world9_fsdd/train.jsonl $(RUNS)/world9_sc/train.jsonl $(REAL_DATA)

.PHONY: demo test lint default-model default-phones default-edge-phones distill-table bias-benchmark loso-table compression-table compression-long compression-gpu edge-benchmark branching-table branching-long benchmarks

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/asr demo --workdir $(RUNS)/demo

# Two pytest-xdist workers (CI has 2 cores), each taking whole files, the slowest first
# (tests/conftest.py orders them); TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The shipped default model (asr/assets/default): 6 h synthesized requests + the training
# parts of FSDD and Speech Commands, `small` recipe (stage 1, about 70 minutes on 2 CPU cores),
# then cosine cycles, each fine-tuned from the last (stage 2: 3,600 steps, 55 minutes; stage 3:
# 2,400 steps time-limited to 34 minutes, it reached 2,338), on the same 2 CPU cores. Stage 4
# adds two more synthesized seeds; it was stopped by hand after 824 steps (17 minutes) to add a
# third corpus with generated voices, and stage 5 (4,000 steps, 65 minutes) starts from its
# last checkpoint: the recipe reproduces that with a 17-minute limit. Stage 6 (2,400 steps, 40
# minutes) adds a fifth corpus with generated voices. Stage 7 ran on a lent NVIDIA H200 (16 CPU
# cores for the data): a new 12 h corpus whose training requests also speak names from the wide
# list (--wide-names), 3-times-larger batches, 14 data worker processes; its 7.2-minute limit
# stopped it at step 3,929 of 4,812 (it includes 154 s of compiling). It went through about
# 404,000 utterances; at stage 8's pace on 2 CPU cores (83,000 in 47 minutes) that is about
# 3.8 hours. That corpus was synthesized before wide names also named
# devices (commit 5de6588): today's code gives a different seed-11 corpus. The device run read
# Speech Commands as Opus files (to fit its 64 MiB transfer); the recipe reads the originals.
# Stage 7 alone made Speech Commands worse (25% WER); stage 8 (2,400 steps, 47 minutes, back on
# 2 CPU cores, all earlier data plus a sixth corpus with wide names) recovered it. Stage 9 (2 CPU
# cores, 1,900 steps in 38 minutes) adds new voice families (Kokoro-82M, WORLD resyntheses of the
# real training clips), sentences outside the templates, noise before/after the words and
# noise-only clips; it ran from stage 8 as shipped (init_from=default at the time). Stage 10 (2 CPU
# cores) fine-tunes stage 9 with an attention biasing network added and a sixth corpus with wide
# names (rebuilt by an earlier line) in two runs: 10a was stopped after its step-200 checkpoint
# (about 300 steps; 12 minutes on cores shared with corpus synthesis), 10b continues from that
# checkpoint on a new 700-step schedule (21 minutes). The network learned nothing measurable
# (README, "Context biasing") and is stripped before shipping; the rest improved.
default-model: $(BIN)/.installed
	$(BIN)/asr corpus synth --out $(RUNS)/corpus6 --hours 6 --seed 0 --noise-dir $(SHARED)/speech_commands/_silence_
	for s in 1 2; do $(BIN)/asr corpus synth --out $(RUNS)/corpus6_s$$s --hours 6 --seed $$s --noise-dir $(SHARED)/speech_commands/_silence_; done
	for s in 3 4; do $(BIN)/asr corpus synth --out $(RUNS)/corpus6_s$${s}r --hours 6 --seed $$s --random-voices 0.6 --noise-dir $(SHARED)/speech_commands/_silence_; done
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
	$(BIN)/asr train --config small --workdir $(RUNS)/default_ft4 --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(TRAIN_DATA4) --time-limit 17 \
	  --set init_from=$(RUNS)/default_ft2/model steps=5000 peak_lr=1e-3 warmup_steps=200 spec_start_step=0 eval_every=1000 ckpt_every=200 real_phrases=0.3
	$(BIN)/asr train --config small --workdir $(RUNS)/default_ft5 --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(TRAIN_DATA5) --time-limit 80 \
	  --set init_from=$(RUNS)/default_ft4 steps=4000 peak_lr=1e-3 warmup_steps=100 spec_start_step=0 eval_every=1000 ckpt_every=200 real_phrases=0.3
	$(BIN)/asr train --config small --workdir $(RUNS)/default_ft6 --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(TRAIN_DATA6) --time-limit 48 \
	  --set init_from=$(RUNS)/default_ft5/model steps=2400 peak_lr=7e-4 warmup_steps=100 spec_start_step=0 eval_every=800 ckpt_every=200 real_phrases=0.3
	$(BIN)/asr corpus synth --out $(RUNS)/corpus12_s11w --hours 12 --seed 11 --random-voices 0.6 --wide-names 0.5 \
	  --workers 16 --noise-dir $(SHARED)/speech_commands/_silence_
	$(BIN)/asr train --config small --workdir $(RUNS)/default_ft7g --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(TRAIN_DATA7) --time-limit 7.2 \
	  --set init_from=$(RUNS)/default_ft6/model steps=4812 frames_per_batch=32000 max_batch=128 peak_lr=1.2e-3 warmup_steps=300 \
	  spec_start_step=0 eval_every=100000 eval_utterances=100 ckpt_every=500 log_every=50 data_workers=14 precompile=true \
	  bucket_frames=128,256,384,512,768,1024,1536 real_phrases=0.3
	$(BIN)/asr corpus synth --out $(RUNS)/corpus6_s6w --hours 6 --seed 6 --random-voices 0.6 --wide-names 0.5 \
	  --noise-dir $(SHARED)/speech_commands/_silence_
	$(BIN)/asr train --config small --workdir $(RUNS)/default_ft8 --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(TRAIN_DATA8) --time-limit 48 \
	  --set init_from=$(RUNS)/default_ft7g/model steps=2400 peak_lr=5e-4 warmup_steps=100 spec_start_step=0 eval_every=800 ckpt_every=200 real_phrases=0.3
	$(BIN)/asr corpus synth --out $(RUNS)/corpus9 --hours 2 --seed 9 --random-voices 0.6 --wide-names 0.5 \
	  --free-sentences 0.25 --noise-dir $(SHARED)/speech_commands/_silence_
	$(BIN)/asr corpus kokoro --out $(RUNS)/kokoro9 --utterances 1500 --seed 9 --noise-dir $(SHARED)/speech_commands/_silence_
	$(BIN)/asr corpus world $(RUNS)/real/fsdd_train.jsonl --out $(RUNS)/world9_fsdd --variants 2 --seed 9
	$(BIN)/asr corpus world $(RUNS)/real/sc_train.jsonl --out $(RUNS)/world9_sc --variants 2 --seed 9
	$(BIN)/asr train --config small --workdir $(RUNS)/default_ft9 --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(TRAIN_DATA9) --time-limit 38 \
	  --set init_from=$(RUNS)/default_ft8/model steps=1900 peak_lr=7e-4 warmup_steps=100 spec_start_step=0 eval_every=950 \
	  ckpt_every=200 real_phrases=0.3 noise_pad_prob=0.3 noise_only=0.03
	$(BIN)/asr train --config small --workdir $(RUNS)/default_ft10 --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(BIAS_DATA) --time-limit 12 \
	  --set init_from=$(RUNS)/default_ft9/model steps=1600 peak_lr=5e-4 warmup_steps=100 eval_every=800 ckpt_every=200 $(BIAS_SET)
	$(BIN)/asr train --config small --workdir $(RUNS)/default_ft10b --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(BIAS_DATA) --time-limit 32 \
	  --set init_from=$(RUNS)/default_ft10 seed=1 steps=700 peak_lr=4e-4 warmup_steps=25 eval_every=700 ckpt_every=100 $(BIAS_SET)
	$(BIN)/python -c "from asr.model_io import strip_biasing as s; s('$(RUNS)/default_ft10b/model', '$(RUNS)/default_ft10b/model_nobias')"
	rm -rf asr/assets/default && mkdir -p asr/assets && cp -r $(RUNS)/default_ft10b/model_nobias asr/assets/default
	cp $(RUNS)/default_ft10b/metrics.jsonl $(RUNS)/default_ft10b/curves.png asr/assets/default/
	$(MAKE) default-phones

# The shipped model's phone head (phonetic name matching, README "Context biasing"), trained on
# the frozen shipped model's encoder output (about 8 minutes on 2 CPU cores after the data):
# seed 0's corpus, the requests that speak a name of three corpora whose every name is one of
# the wide names, the real training clips, and 1,902 Kokoro-82M requests in its training styles
# (seed 9: the first 1,500 are stage 9's; 27 minutes to synthesize when absent). No held-out
# name or voice style is in them.
default-phones: $(BIN)/.installed
	$(BIN)/asr corpus kokoro --out $(RUNS)/kokoro9 --utterances 2000 --seed 9 --noise-dir $(SHARED)/speech_commands/_silence_
	for s in 7 8 12; do test -f $(RUNS)/wide$$s/train.jsonl || $(BIN)/asr corpus synth --out $(RUNS)/wide$$s --hours 12 \
	  --seed $$s --wide-names 1.0 --free-sentences 0.2 --random-voices 0.6 --noise-dir $(SHARED)/speech_commands/_silence_; \
	  $(BIN)/python -c "import json; from train.benchmarks.biasing import spoken_names; \
	  rows = [json.loads(x) for x in open('$(RUNS)/wide'+'$$s'+'/train.jsonl')]; \
	  open('$(RUNS)/wide'+'$$s'+'/train_named.jsonl', 'w').writelines(json.dumps(r) + '\\n' for r in rows if spoken_names(r))"; done
	$(BIN)/asr train-phones --model asr/assets/default --out $(RUNS)/default_phones --data $(RUNS)/corpus6/train.jsonl \
	  $(RUNS)/wide7/train_named.jsonl $(RUNS)/wide8/train_named.jsonl $(RUNS)/wide12/train_named.jsonl \
	  $(RUNS)/real/fsdd_train.jsonl $(RUNS)/real/sc_train.jsonl $(RUNS)/kokoro9/train.jsonl
	cp $(RUNS)/default_phones/phones.json $(RUNS)/default_phones/phones.msgpack $(RUNS)/default_phones/phones_log.jsonl \
	  asr/assets/default/

# The shipped edge artifact's phone head (after default-phones): a separable head of width 96
# (32 k weights) learned on the artifact's own fake-quant encoder through 4-bit levels, taught by
# the float model's head as well, on default-phones' data (Kokoro requests included), so the
# artifact stays under 1% of the large model (14 minutes on 2 CPU cores shared with other jobs);
# every other byte of the artifact is kept.
default-edge-phones: $(BIN)/.installed
	$(BIN)/asr train-phones --model asr/assets/default.edge --teacher default --conv separable --hidden 96 \
	  --weight-bits 4 --out $(RUNS)/edge/default_small_phones.edge --data $(RUNS)/corpus6/train.jsonl \
	  $(RUNS)/wide7/train_named.jsonl $(RUNS)/wide8/train_named.jsonl $(RUNS)/wide12/train_named.jsonl \
	  $(RUNS)/real/fsdd_train.jsonl $(RUNS)/real/sc_train.jsonl $(RUNS)/kokoro9/train.jsonl
	cp $(RUNS)/edge/default_small_phones.edge asr/assets/default.edge

# The README's distillation table ("The small model distilled"): three 800-step fine-tunes of the
# shipped model on stage 10's data with random channels, without a teacher and distilled from the
# shipped model hearing clean audio (weights 0.5 and 0.1), then the unseen-voice sets (needs
# $(RUNS)/kokoro9_test: asr corpus kokoro --out $(RUNS)/kokoro9_test --utterances 300 --split test
# --seed 9 --noise-dir ...; and the coffee orders: asr corpus import speech_to_intent).
DISTILL_SET = init_from=default seed=2 steps=800 peak_lr=4e-4 warmup_steps=50 eval_every=800 ckpt_every=100 \
  spec_start_step=0 real_phrases=0.3 noise_pad_prob=0.3 noise_only=0.03 channel_prob=0.3
distill-table: $(BIN)/.installed
	$(BIN)/asr corpus import speech_to_intent $(SHARED)/speech_to_intent --out $(RUNS)/real/s2i_vocab.jsonl \
	  --vocabulary $(SHARED)/requests/vocabulary.txt
	for r in n: t:teacher=default,teacher_clean=true,distill_weight=0.5 w:teacher=default,teacher_clean=true,distill_weight=0.1; do \
	  name=$${r%%:*}; set=$$(echo $${r#*:} | tr , ' '); \
	  $(BIN)/asr train --config small --workdir $(RUNS)/default_ft11$$name --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(BIAS_DATA) --set $(DISTILL_SET) $$set || exit 1; done
	$(BIN)/python -m train.benchmarks.heldout --models default $(RUNS)/default_ft11n/model $(RUNS)/default_ft11t/model \
	  $(RUNS)/default_ft11w/model --set synth=$(RUNS)/corpus6/test.jsonl --set fsdd=$(RUNS)/real/fsdd_test.jsonl \
	  --set sc=$(RUNS)/real/sc_test.jsonl --set kokoro_heldout=$(RUNS)/kokoro9_test/test.jsonl \
	  --set s2i=$(RUNS)/real/s2i_vocab.jsonl --leadin sc_leadin=$(RUNS)/real/sc_test.jsonl \
	  --noise-dir $(SHARED)/speech_commands/_silence_

# The context-biasing benchmark of the README: held-out names in lists of 20, 100 and 1,000; then
# held-out names in another voice family (Kokoro-82M's held-out styles), lists of 20 and 100.
bias-benchmark: $(BIN)/.installed
	for s in 100 101 102; do $(BIN)/asr corpus synth --out $(RUNS)/names_test_s$$s --hours 6 --seed $$s --test-only \
	  --noise-dir $(SHARED)/speech_commands/_silence_; done
	$(BIN)/python -m train.benchmarks.biasing --model $(RUNS)/default_ft10b/model --model default \
	  --names $(RUNS)/corpus6/test.jsonl $(RUNS)/names_test_s101/test.jsonl $(RUNS)/names_test_s102/test.jsonl \
	  --real fsdd=$(RUNS)/real/fsdd_test.jsonl --real sc=$(RUNS)/real/sc_test.jsonl --boost 0.5 --lm-weight 0.1
	$(BIN)/asr corpus kokoro --out $(RUNS)/kokoro_names --utterances 300 --split test --seed 9 \
	  --noise-dir $(SHARED)/speech_commands/_silence_
	for s in 10 11; do $(BIN)/asr corpus kokoro --out $(RUNS)/kokoro_names_s$$s --utterances 400 --split test --seed $$s \
	  --noise-dir $(SHARED)/speech_commands/_silence_; done
	$(BIN)/python -m train.benchmarks.biasing --model default --names $(RUNS)/kokoro_names/test.jsonl \
	  $(RUNS)/kokoro_names_s10/test.jsonl $(RUNS)/kokoro_names_s11/test.jsonl --sizes 20 100 --boost 0.5

# The compression table of the README: fine-tunes of the shipped float model, each 250 steps on
# the same data (corpus6 + FSDD + Speech Commands training parts), compressed in training by the
# absolute-cosine regularizer (acos), by straight-through fake quantization (ste), or only
# pruned (hard gradual magnitude pruning, the PTQ baseline's starting point), then every cell
# evaluated with 8-bit activations (train/benchmarks/compression.py). COMP_RUNS picks the cells.
COMP_DATA = $(RUNS)/corpus6/train.jsonl $(RUNS)/corpus6/dev.jsonl $(RUNS)/real/fsdd_train.jsonl $(RUNS)/real/sc_train.jsonl
COMP_SET = init_from=default steps=250 frames_per_batch=5000 peak_lr=3e-4 warmup_steps=20 spec_start_step=0 eval_every=250 \
  eval_utterances=100 ckpt_every=50 log_every=10 real_phrases=0.3 noise_pad_prob=0.3 noise_only=0.03
COMP_RUNS ?= float:quant_method=none acos4_s0:quant_method=acos,quant_bits=4 ste4_s0:quant_method=ste,quant_bits=4 \
  acos4_s50r:quant_method=acos,quant_bits=4,sparsity=0.5 acos4_s50_w30:quant_method=acos,quant_bits=4,sparsity=0.5,quant_weight=30 \
  ste4_s50:quant_method=ste,quant_bits=4,sparsity=0.5,sparsity_method=hard gmp_s50:sparsity=0.5,sparsity_method=hard pen_s50:sparsity=0.5 mracos4_s0:quant_method=mr-acos,quant_bits=4 \
  ste4_s40:quant_method=ste,quant_bits=4,sparsity=0.4,sparsity_method=hard,sparsity_end=0.8,init_from=$(RUNS)/comp/ste4_s0/model,steps=300,eval_every=300 \
  ste4_s50gx:quant_method=ste,quant_bits=4,sparsity=0.5,sparsity_method=hard,sparsity_scope=global,sparsity_exclude=small \
  ste4_s50gx_kd:quant_method=ste,quant_bits=4,sparsity=0.5,sparsity_method=hard,sparsity_scope=global,sparsity_exclude=small,teacher=default,distill_weight=0.5 \
  ste4s8_s50gx_kd:quant_method=ste,quant_bits=4,quant_small_bits=8,sparsity=0.5,sparsity_method=hard,sparsity_scope=global,sparsity_exclude=small,teacher=default,distill_weight=0.5 \
  gmp_s70:sparsity=0.7,sparsity_method=hard ste4_s70:quant_method=ste,quant_bits=4,sparsity=0.7,sparsity_method=hard \
  ste8_s0:quant_method=ste,quant_bits=8 ste6_s0:quant_method=ste,quant_bits=6 acos8_s0:quant_method=acos,quant_bits=8 \
  acos6_s0:quant_method=acos,quant_bits=6 \
  ste8_s50:quant_method=ste,quant_bits=8,sparsity=0.5,sparsity_method=hard ste6_s50:quant_method=ste,quant_bits=6,sparsity=0.5,sparsity_method=hard \
  acos8_s50:quant_method=acos,quant_bits=8,sparsity=0.5 acos6_s50:quant_method=acos,quant_bits=6,sparsity=0.5 \
  ste8_s70:quant_method=ste,quant_bits=8,sparsity=0.7,sparsity_method=hard ste6_s70:quant_method=ste,quant_bits=6,sparsity=0.7,sparsity_method=hard \
  acos8_s70:quant_method=acos,quant_bits=8,sparsity=0.7 acos6_s70:quant_method=acos,quant_bits=6,sparsity=0.7 \
  acos4_s70:quant_method=acos,quant_bits=4,sparsity=0.7 mracos4_s50:quant_method=mr-acos,quant_bits=4,sparsity=0.5 \
  ste4_s70gx:quant_method=ste,quant_bits=4,sparsity=0.7,sparsity_method=hard,sparsity_scope=global,sparsity_exclude=small
compression-table: $(BIN)/.installed
	$(BIN)/asr corpus synth --out $(RUNS)/corpus6 --hours 6 --seed 0 --noise-dir $(SHARED)/speech_commands/_silence_
	$(BIN)/asr corpus import fsdd $(SHARED)/fsdd --out $(RUNS)/real/fsdd_train.jsonl --split train
	$(BIN)/asr corpus import fsdd $(SHARED)/fsdd --out $(RUNS)/real/fsdd_test.jsonl --split test
	for s in train test; do $(BIN)/asr corpus import speech_commands $(SHARED)/speech_commands --out $(RUNS)/real/sc_$$s.jsonl --split $$s; done
	for r in $(COMP_RUNS); do name=$${r%%:*}; set=$$(echo $${r#*:} | tr , ' '); \
	  $(BIN)/asr train --config small --workdir $(RUNS)/comp/$$name --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(COMP_DATA) --set $(COMP_SET) $$set || exit 1; done
	$(BIN)/python -m train.benchmarks.compression --float default --runs $(RUNS)/comp --limit 400 --small-bits 8 \
	  --set synth=$(RUNS)/corpus6/test.jsonl --set fsdd=$(RUNS)/real/fsdd_test.jsonl --set sc=$(RUNS)/real/sc_test.jsonl
	$(BIN)/python -m train.benchmarks.compression --float default --runs $(RUNS)/comp --bits 0 4 --small-bits 8 \
	  --one-shot 0.5 --one-shot-scope global --one-shot-exclude small --limit 400 --set sc=$(RUNS)/real/sc_test.jsonl \
	  --leadin sc=$(RUNS)/real/sc_test.jsonl --noise-dir $(SHARED)/speech_commands/_silence_ --out $(RUNS)/comp/leadin.jsonl

# The longer compression runs of the README: 4-bit STE-QAT with hard pruning to 50%, distilled
# from the shipped float model, 2,000 steps: per layer on the compression table's data; global
# with the small layers dense (sparsity_exclude=small) on that data and on stage 10's, and the
# same with the small layers at 8 bits (quant_small_bits=8); the float control (the same
# distilled 2,000 steps, no compression); then the compression benchmark
# (with one-shot pruning both ways) and the held-out sets.
LONG_SET = steps=2000 eval_every=2000 ckpt_every=100 log_every=25 quant_method=ste quant_bits=4 \
  sparsity=0.5 sparsity_method=hard sparsity_end=0.7 teacher=default distill_weight=0.5
compression-long: $(BIN)/.installed
	$(BIN)/asr train --config small --workdir $(RUNS)/comp_long/ste4_s50_kd --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(COMP_DATA) --set $(COMP_SET) $(LONG_SET)
	$(BIN)/asr train --config small --workdir $(RUNS)/comp_long/ste4_s50gx_kd --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(COMP_DATA) --set $(COMP_SET) $(LONG_SET) sparsity_scope=global sparsity_exclude=small
	$(BIN)/asr train --config small --workdir $(RUNS)/comp_long/ste4_s50gx_kd_d10 --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(BIAS_DATA) --set $(COMP_SET) $(LONG_SET) sparsity_scope=global sparsity_exclude=small
	$(BIN)/asr train --config small --workdir $(RUNS)/comp_long/ste4s8_s50gx_kd --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(COMP_DATA) --set $(COMP_SET) $(LONG_SET) sparsity_scope=global sparsity_exclude=small quant_small_bits=8
	$(BIN)/asr train --config small --workdir $(RUNS)/comp_long/float_kd --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(COMP_DATA) --set $(COMP_SET) $(LONG_SET) quant_method=none sparsity=0
	$(BIN)/python -m train.benchmarks.compression --float default --runs $(RUNS)/comp_long --bits 4 --limit 400 \
	  --set synth=$(RUNS)/corpus6/test.jsonl --set fsdd=$(RUNS)/real/fsdd_test.jsonl --set sc=$(RUNS)/real/sc_test.jsonl
	$(BIN)/python -m train.benchmarks.compression --float default --runs $(RUNS)/comp_long --bits 4 --limit 400 \
	  --one-shot-scope global --one-shot-exclude small --only one-shot \
	  --set synth=$(RUNS)/corpus6/test.jsonl --set fsdd=$(RUNS)/real/fsdd_test.jsonl --set sc=$(RUNS)/real/sc_test.jsonl
	$(BIN)/python -m train.benchmarks.heldout --models default $(RUNS)/comp_long/ste4_s50gx_kd/model \
	  $(RUNS)/comp_long/ste4_s50gx_kd_d10/model $(RUNS)/comp_long/ste4s8_s50gx_kd/model \
	  $(RUNS)/comp_long/float_kd/model --set synth=$(RUNS)/corpus6/test.jsonl --set fsdd=$(RUNS)/real/fsdd_test.jsonl \
	  --set sc=$(RUNS)/real/sc_test.jsonl --set kokoro_heldout=$(RUNS)/kokoro9_test/test.jsonl \
	  --set s2i=$(RUNS)/real/s2i_vocab.jsonl --leadin sc_leadin=$(RUNS)/real/sc_test.jsonl \
	  --noise-dir $(SHARED)/speech_commands/_silence_

# The GPU compression runs of the README (issue 11's target): compression-long's recipes
# ste4s8_s50gx_kd and float_kd (the same COMP_SET and LONG_SET, STE-QAT 4-bit with the small
# layers 8-bit, hard gradual pruning to 50% globally with the small layers dense, reached at 70%
# of the run, distilled from the shipped model; and the float control) with a GPU's budget:
# 3.2x the batch (160 s of audio), 2,400 steps, peak learning rate 5e-4, both at once on one
# GPU with 7 data workers each (16 host cores). Made on a lent NVIDIA H200 in one 460 s command
# (compiling 192-247 s); that run read the FSDD and Speech Commands training clips and the noise
# clips as Opus copies of about 32 kb/s, to fit its 64 MiB transfer. Evaluated on 2 CPU cores
# like the other tables; the held-out sets as distill-table says ($(RUNS)/kokoro9_test,
# $(RUNS)/real/s2i_vocab.jsonl).
GPU_COMP_SET = $(COMP_SET) $(LONG_SET) steps=2400 frames_per_batch=16000 max_batch=128 \
  bucket_frames=128,256,384,512,768,1024,1536 peak_lr=5e-4 warmup_steps=100 eval_every=100000 ckpt_every=200 \
  log_every=50 data_workers=7 precompile=true
compression-gpu: $(BIN)/.installed
	$(BIN)/asr corpus synth --out $(RUNS)/corpus6 --hours 6 --seed 0 --workers 16 --noise-dir $(SHARED)/speech_commands/_silence_
	for s in train test; do $(BIN)/asr corpus import fsdd $(SHARED)/fsdd --out $(RUNS)/real/fsdd_$$s.jsonl --split $$s && \
	  $(BIN)/asr corpus import speech_commands $(SHARED)/speech_commands --out $(RUNS)/real/sc_$$s.jsonl --split $$s || exit 1; done
	XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 $(BIN)/asr train --config small --workdir $(RUNS)/comp_gpu/g_ste4s8_s50gx_kd \
	  --noise-dir $(SHARED)/speech_commands/_silence_ --data $(COMP_DATA) --set $(GPU_COMP_SET) quant_small_bits=8 \
	  sparsity_scope=global sparsity_exclude=small & q=$$!; \
	XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 $(BIN)/asr train --config small --workdir $(RUNS)/comp_gpu/g_float_kd \
	  --noise-dir $(SHARED)/speech_commands/_silence_ --data $(COMP_DATA) --set $(GPU_COMP_SET) quant_method=none sparsity=0 & \
	  f=$$!; wait $$q && wait $$f
	$(BIN)/python -m train.benchmarks.compression --float default --runs $(RUNS)/comp_gpu --bits 4 --limit 400 \
	  --set synth=$(RUNS)/corpus6/test.jsonl --set fsdd=$(RUNS)/real/fsdd_test.jsonl --set sc=$(RUNS)/real/sc_test.jsonl
	$(BIN)/python -m train.benchmarks.heldout --models default $(RUNS)/comp_gpu/g_ste4s8_s50gx_kd/model \
	  $(RUNS)/comp_gpu/g_float_kd/model --set synth=$(RUNS)/corpus6/test.jsonl --set fsdd=$(RUNS)/real/fsdd_test.jsonl \
	  --set sc=$(RUNS)/real/sc_test.jsonl --set kokoro_heldout=$(RUNS)/kokoro9_test/test.jsonl \
	  --set s2i=$(RUNS)/real/s2i_vocab.jsonl --leadin sc_leadin=$(RUNS)/real/sc_test.jsonl \
	  --noise-dir $(SHARED)/speech_commands/_silence_

# The edge tables of the README (after compression-table, whose ste4_s0 run is the edge
# default): the emulated processor against the fake-quant model on the three test sets, artifact
# sizes, modeled cost per 10 ms on the default processor, and the emulator's speed here.
EDGE_SETS = --set synth=$(RUNS)/corpus6/test.jsonl --set fsdd=$(RUNS)/real/fsdd_test.jsonl --set sc=$(RUNS)/real/sc_test.jsonl
edge-benchmark: $(BIN)/.installed
	$(BIN)/python -m hw.benchmarks.edge --model default --what equiv --bits 8 4 --limit 400 $(EDGE_SETS)
	$(BIN)/python -m hw.benchmarks.edge --model $(RUNS)/comp/ste4_s40/model --what size equiv --bits 4 --sparsity 0 --limit 400 $(EDGE_SETS)
	$(BIN)/python -m hw.benchmarks.edge --model default --what size cost --bits 8 4 --sparsity 0 0.5 0.7 $(EDGE_SETS) \
	  --out $(RUNS)/edge/cost.jsonl --plot docs/edge_cost.png
	$(BIN)/python -m hw.benchmarks.edge --model default --what cost --bits 8 4 --sparsity 0 --cost-part stream \
	  --set synth=$(RUNS)/corpus6/test.jsonl --out $(RUNS)/edge/cost_stream.jsonl
	$(BIN)/python -m hw.benchmarks.edge --model default --what speed --bits 4 $(EDGE_SETS)
	$(BIN)/python -m hw.benchmarks.edge --model $(RUNS)/comp/ste4_s0/model --what size equiv --bits 4 --sparsity 0 --limit 400 $(EDGE_SETS)
	$(BIN)/asr export --model $(RUNS)/comp/ste4_s0/model --bits 4 -o $(RUNS)/edge/default.edge

benchmarks: $(BIN)/.installed
	$(BIN)/python -m train.benchmarks.train_step
	$(BIN)/python -m train.benchmarks.loss --quick
	$(BIN)/python -m train.benchmarks.augment
	$(BIN)/python -m train.benchmarks.long_audio
	$(BIN)/python -m train.benchmarks.unseen_voices --steps 1500 --workdir $(RUNS)/unseen
	$(BIN)/python -m train.benchmarks.transcribe --model default --manifest $(RUNS)/corpus6/test.jsonl $(RUNS)/real/fsdd_test.jsonl $(RUNS)/real/sc_test.jsonl --limit 300

# The README's FSDD leave-one-speaker-out table: the unseen-voice benchmark's demo-scale runs
# (`all` and one per FSDD speaker left out) as its recipe and without the WORLD family, and the
# speaker runs again with waveform augmentation; the three share one data folder
loso-table: $(BIN)/.installed
	$(BIN)/python -m train.benchmarks.unseen_voices --steps 1500 --runs all fsdd-loso --workdir $(RUNS)/unseen
	$(BIN)/python -m train.benchmarks.unseen_voices --steps 1500 --runs all fsdd-loso --workdir $(RUNS)/unseen_noworld \
	  --data-dir $(RUNS)/unseen/data --drop world
	$(BIN)/python -m train.benchmarks.unseen_voices --steps 1500 --runs fsdd-loso --workdir $(RUNS)/unseen_aug \
	  --data-dir $(RUNS)/unseen/data --set augment_prob=0.8

# The branching-encoder table, curve and pictures of the README (after compression-table, whose
# corpus, real-speech manifests and float control run it reuses): fine-tunes of the shipped
# model with the COMP_SET recipe, branching at four budgets and a static 2-layer model of about
# the same MACs, evaluated against the expensive-only encoder (train/benchmarks/branching.py).
BRANCH_B = encoder=branching,branch_rank=32,branch_ff=128,branch_imitation=1
BRANCH_RUNS ?= static2:encoder_layers=2 i45:$(BRANCH_B),branch_budget=0.45 i60:$(BRANCH_B),branch_budget=0.6 \
  i75:$(BRANCH_B),branch_budget=0.75 i90:$(BRANCH_B),branch_budget=0.9 \
  i60kd_w50:$(BRANCH_B),branch_budget=0.6,teacher=default,distill_weight=0.5 \
  i60kd_w500:$(BRANCH_B),branch_budget=0.6,teacher=default,distill_weight=0.5,branch_weight=500 \
  i60kd_w500_1k:$(BRANCH_B),branch_budget=0.6,teacher=default,distill_weight=0.5,branch_weight=500,steps=1000,eval_every=1000 \
  a60:$(BRANCH_B),branch_attend=true,branch_budget=0.6 \
  a60kd_w500_1k:$(BRANCH_B),branch_attend=true,branch_budget=0.6,teacher=default,distill_weight=0.5,branch_weight=500,steps=1000,eval_every=1000 \
  a50kd_w500_2k:$(BRANCH_B),branch_attend=true,branch_budget=0.5,teacher=default,distill_weight=0.5,branch_weight=500,steps=2000,eval_every=2000 \
  a50f_kd_w500_1k:$(BRANCH_B),branch_attend=true,branch_budget=0.5,freeze=expensive,teacher=default,distill_weight=0.5,branch_weight=500,steps=1000,eval_every=1000 \
  a50f_kd_w500_2k:$(BRANCH_B),branch_attend=true,branch_budget=0.5,freeze=expensive,teacher=default,distill_weight=0.5,branch_weight=500,steps=2000,eval_every=2000
branching-table: $(BIN)/.installed
	for r in $(BRANCH_RUNS); do name=$${r%%:*}; set=$$(echo $${r#*:} | tr , ' '); \
	  $(BIN)/asr train --config small --workdir $(RUNS)/branch/$$name --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(COMP_DATA) --set $(COMP_SET) $$set || exit 1; done
	$(BIN)/python -m train.benchmarks.branching --baseline default --control $(RUNS)/comp/float/model --runs $(RUNS)/branch \
	  --limit 400 $(EDGE_SETS) --plot docs/branching_curve.png
	$(BIN)/asr plot branches --model $(RUNS)/branch/i90/model --audio $(RUNS)/corpus6/audio/0010/0010288.flac -o docs/branching_frames.png
	for m in $(RUNS)/comp/float/model $(RUNS)/branch/i90/model $(RUNS)/branch/i75/model; do \
	  $(BIN)/python -m hw.benchmarks.edge --model $$m --what cost --bits 8 --sparsity 0 --cost-part encoder \
	  --set synth=$(RUNS)/corpus6/test.jsonl --cost-utterances 1 --out $(RUNS)/branch/edge_cost_encoder_1utt.jsonl || exit 1; done
	$(BIN)/python -m hw.benchmarks.edge --from-results $(RUNS)/branch/edge_cost_encoder_1utt.jsonl

# The longer branching run: budget 0.6, distilled from the shipped model (teacher=default),
# 2,000 steps; its expensive-only reference is compression-long's float control (float_kd:
# the same steps, data and teacher, plain encoder).
branching-long: $(BIN)/.installed
	$(BIN)/asr train --config small --workdir $(RUNS)/branch_long/i60_kd --noise-dir $(SHARED)/speech_commands/_silence_ \
	  --data $(COMP_DATA) --set $(COMP_SET) steps=2000 eval_every=2000 ckpt_every=100 log_every=25 encoder=branching \
	  branch_rank=32 branch_ff=128 branch_imitation=1 branch_budget=0.6 teacher=default distill_weight=0.5
	$(BIN)/python -m train.benchmarks.branching --baseline default --control $(RUNS)/comp_long/float_kd/model \
	  --runs $(RUNS)/branch_long --limit 400 $(EDGE_SETS)
