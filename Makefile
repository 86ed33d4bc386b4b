# The README's two commands: `make demo` (set up, then run the whole nightly flow on the embedded
# default) and `make test` (set up, then run the whole test suite). Everything else is a step of those.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# pyspark <-> delta-spark <-> Delta jars must match: keep these three in step with pyproject.toml.
DELTA_VERSION := 4.4.0
DELTA_SCALA   := 4.2_2.13
JARS_DIR      := .jars
DELTA_JARS    := $(JARS_DIR)/delta-spark_$(DELTA_SCALA)-$(DELTA_VERSION).jar $(JARS_DIR)/delta-storage-$(DELTA_VERSION).jar

RUN_DATE ?= 2011-12-09
LAKE     ?= $(CURDIR)/lake
RETAIL   ?= $(CURDIR)/../shared/data/online_retail
PYTEST_ARGS ?=
# Test files run on this many pytest-xdist workers, a file's tests on one worker (its module fixtures built
# once), handed out in the suite's order (tests/conftest.py: files with slow tests first; xdist's default
# order, most tests first, left the longest files to the end). Much of a test's time is JVM, Ray and Airflow
# start-up and waiting, so 2 workers overlap well even on 2 cores; 0 runs everything in one process.
PYTEST_WORKERS ?= 2
PYTEST_XDIST   := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

export WARMSTART_JARS_DIR := $(CURDIR)/$(JARS_DIR)
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup jars cds demo test test-fast clean airflow-env chromium tools
setup: $(VENV)/.installed jars cds chromium airflow-env tools

# Azurite, the Azure Blob emulator that tests/test_lock_azure.py runs the Azure run lock against (npm; 3.36 and
# later need Node >= 21), in a project-local folder (.gitignore).
AZURITE_VERSION := 3.35.0
TOOLS_DIR       := .tools
tools: $(TOOLS_DIR)/.azurite-$(AZURITE_VERSION)
$(TOOLS_DIR)/.azurite-$(AZURITE_VERSION):
	npm install -q --prefix $(TOOLS_DIR) --no-save --no-audit --no-fund azurite@$(AZURITE_VERSION)
	touch $@

# Airflow has its own virtualenv: its Spark provider pulls pyspark-client, which would break .venv's pyspark.
AIRFLOW_VENV := .venv-airflow
airflow-env: $(AIRFLOW_VENV)/.installed
$(AIRFLOW_VENV)/.installed: infra/airflow/requirements.txt
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install -q -r infra/airflow/requirements.txt
	touch $@

# Headless Chromium renders the quality reports in tests (offline). CI runs as root; elsewhere install it yourself.
chromium:
	test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

jars: $(DELTA_JARS)
$(JARS_DIR)/delta-spark_$(DELTA_SCALA)-$(DELTA_VERSION).jar:
	mvn -q -B dependency:copy -Dartifact=io.delta:delta-spark_$(DELTA_SCALA):$(DELTA_VERSION) -DoutputDirectory=$(JARS_DIR)
$(JARS_DIR)/delta-storage-$(DELTA_VERSION).jar:
	mvn -q -B dependency:copy -Dartifact=io.delta:delta-storage:$(DELTA_VERSION) -DoutputDirectory=$(JARS_DIR)

# Spark drivers map their classes from this archive and start 3-5 s sooner (infra/spark/build_cds_archive.py).
# Optional: without it (another JVM, a failed build) jobs run as before, so a failure here only warns.
CDS_ARCHIVE := $(JARS_DIR)/spark-cds.jsa
cds: $(CDS_ARCHIVE)
$(CDS_ARCHIVE): $(VENV)/.installed $(DELTA_JARS) infra/spark/build_cds_archive.py
	$(BIN)/python infra/spark/build_cds_archive.py --out $@ || echo "warning: no CDS archive; Spark drivers start without it"

demo: setup
	$(BIN)/warmstart nightly --lake $(LAKE) --run-date $(RUN_DATE) --format online-retail \
	  --events $(RETAIL)/online_retail_ii_2009_2010.csv.gz $(RETAIL)/online_retail.csv.gz

test: setup
	$(BIN)/pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest $(PYTEST_XDIST) -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf lake reports models spark-warehouse
