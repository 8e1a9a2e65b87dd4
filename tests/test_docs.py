"""The README's config reference is generated from the schemas: it must be the generator's current output."""

import importlib.util

from tests.conftest import REPO


def load_generator():
    spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_config_reference_is_current():
    generator = load_generator()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index(generator.START) : readme.index(generator.END) + len(generator.END)]
    assert block == generator.render(), "README.md is out of date: run .venv/bin/python scripts/config_reference.py"


def test_reference_lists_every_model_and_its_own_keys_only():
    from pipeline.models.registry import MODELS

    rendered = load_generator().render()
    for name, model_class in MODELS.items():
        section = rendered.split(f"#### `model.name: {name}`")[1].split("#### `model.name:")[0]
        keys = {line.split("`")[1].removeprefix("model.") for line in section.splitlines() if line.startswith("| `model.")}
        listed = {key for key in keys if "." not in key}  # nested sections (model.loss.*) have tables of their own
        assert listed == set(model_class.config_class.model_fields) - {"name"}, name


def test_every_public_name_and_method_of_the_library_has_a_docstring():
    import inspect

    import pipeline

    missing = []
    for name in pipeline.__all__:
        value = getattr(pipeline, name)
        if not (value.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(value):
            missing += [f"{name}.{method}" for method, function in vars(value).items()
                        if not method.startswith("_") and inspect.isfunction(function) and not (function.__doc__ or "").strip()]
    assert missing == []
