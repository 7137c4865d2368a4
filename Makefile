# Thin aliases for ./dev, which installs what each target needs (see README.md).
.PHONY: test demo soak bench venv install
test:  ; ./dev test
demo:  ; ./dev demo
soak:  ; ./dev soak
bench: ; ./dev bench
venv:  ; ./dev venv
install: ; ./dev install
