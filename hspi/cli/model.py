"""`hspi model ...`: register your own models (Hugging Face directories, GGUF files) and list them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from hspi.cli.app import app, console, err

model_app = typer.Typer(no_args_is_help=True, help="Register and inspect models (built-in and your own).")
app.add_typer(model_app, name="model")


@model_app.command("add")
def model_add(
    name: Annotated[str, typer.Argument(help="name to register the model under (lowercase, digits, . _ -)")],
    hf: Annotated[
        Optional[Path], typer.Option("--hf", help="Hugging Face model directory (safetensors weights, tokenizer)")
    ] = None,
    gguf: Annotated[Optional[Path], typer.Option("--gguf", help="GGUF file of the same model")] = None,
    convert_gguf: Annotated[
        bool,
        typer.Option(
            "--convert-gguf", help="make the GGUF from --hf with llama.cpp's convert_hf_to_gguf.py (F32), for llama.cpp"
        ),
    ] = False,
    llama_cpp_source: Annotated[
        Optional[Path],
        typer.Option(
            help="llama.cpp source tree holding convert_hf_to_gguf.py (default: $HSPI_LLAMA_CPP_SOURCE, .venv)"
        ),
    ] = None,
) -> None:
    """Check a model's files and register them under NAME (the same weights again: nothing changes)."""
    from hspi.collector.registry import ModelRegistry, converted_gguf_path
    from hspi.errors import ConfigError

    registry = ModelRegistry()
    if convert_gguf:
        from hspi.collector.gguf_convert import convert_hf_to_gguf, converter_source

        if hf is None or gguf is not None:
            raise ConfigError("--convert-gguf makes the GGUF from --hf: give --hf and no --gguf")
        source = converter_source(llama_cpp_source)
        with err.status(f"converting {hf} with llama.cpp's converter"):
            gguf = convert_hf_to_gguf(hf, converted_gguf_path(name, hf), source)
    with err.status(f"checking {name}"):
        card, created = registry.add(name, hf=hf, gguf=gguf)
    verb = "registered" if created else "already registered (same weights)"
    console.print(
        f"{card.name}: {verb}, {card.architecture}, {card.parameter_count:,} parameters, weights {card.weights_sha256[:16]}"
    )
    if card.gguf is not None:
        console.print(f"  gguf: {card.gguf.check}")
    console.print(f"  card: {registry.card_path(card.name)}")


@model_app.command("list")
def model_list() -> None:
    """Every model: the built-in reference models, then the registered ones."""
    from rich.table import Table

    from hspi.collector.registry import list_models

    table = Table()
    for column in ("name", "kind", "architecture", "parameters", "vocab", "weights", "sources"):
        table.add_column(column)
    for card in list_models():
        sources = card.sources
        where = sources.builtin or ", ".join(s for s in (sources.hf, sources.gguf) if s)
        table.add_row(
            card.name,
            card.kind,
            card.architecture,
            f"{card.parameter_count:,}",
            str(card.vocab_size or "-"),
            card.weights_sha256[:12],
            where,
        )
    console.print(table)


@model_app.command("show")
def model_show(name: Annotated[str, typer.Argument(help="model name")]) -> None:
    """A model's card, as JSON."""
    from hspi.collector.registry import get_model

    card = get_model(name)
    typer.echo(card.model_dump_json(indent=2))
