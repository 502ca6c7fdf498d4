#!/bin/bash
# Download, into .whl/, the wheels that benchmarks/gpu_check.sh installs on a lent H200 machine:
# the packages this project imports that its image (Python 3.12, torch 2.11, transformers 5.17)
# lacks, at the versions this checkout's .venv holds (found by replaying an audit, the workload
# build and the reference loop's imports in a venv with only the image's package set: 26 MB).
#   bash benchmarks/gpu_wheels.sh    # then: run `bash benchmarks/gpu_check.sh 2>&1` with carry [".whl"]
set -eu
PY=${PY:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
specs=""
for d in sae-lens transformer-lens better-abc datasets multiprocess dill truststore simple-parsing docstring_parser \
         wandb platformdirs pydantic pydantic_core typing-inspection annotated-types googleapis-common-protos \
         opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-exporter-otlp-proto-http \
         opentelemetry-exporter-otlp-proto-common opentelemetry-proto opentelemetry-exporter-http-transport; do
  specs="$specs $d==$($PY -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$d")"
done
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $specs
ls .whl | wc -l; du -sh .whl
