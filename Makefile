.PHONY: install test lint bench demo

install:
	python -m pip install "torch==2.13.0"
	python -m pip install -e ".[dev]"

test:
	python -m pytest -q -n 2 --dist loadfile

lint:
	ruff check src tests bench scripts
	ruff format --check src tests bench scripts
	mypy src

bench:
	python bench/engine_batching.py

demo:
	diffloc generate --model shapesworld --prompt "a red circle with stripes on a white background" --out demo-out
