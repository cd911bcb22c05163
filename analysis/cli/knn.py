"""CLI: `knn serve` (share an index folder) and `knn query` (dataset side of the probe)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from analysis.cli.generate import print_summary

console = Console()
knn_app = typer.Typer(
    help="LAION-style kNN neighbours (clip-retrieval protocol).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def register(app: typer.Typer) -> None:
    app.add_typer(knn_app, name="knn")


@knn_app.command("serve")
def serve(
    index: Path = typer.Option(..., "--index", help="clip-retrieval index folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    port: int = typer.Option(1234, "--port"),
    clip_model: str = typer.Option(None, "--clip-model", help="CLIP for text queries (or 'tiny')."),
) -> None:
    """Serve a local index over clip-retrieval's HTTP protocol (knn-service, metadata, indices).

    Answers in clip-retrieval back 2.45.0's shapes, with `image` (base64) for rows whose
    image_path is a file here, so clients never need this machine's paths.
    """
    from analysis.laion.backends import LocalIndexBackend
    from analysis.laion.server import make_server

    server = make_server(LocalIndexBackend(index, clip_model), host, port)
    console.print(f"serving {index} as {index.name!r} on http://{host}:{server.server_port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


@knn_app.command("query")
def query(
    backend: str = typer.Option(
        ...,
        "--backend",
        help="http(s)://clip-retrieval server (its columns_to_return should list url, caption, "
        "NSFW; image_path only if every row has one) or a local index folder.",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Run directory (shared with the model-side probe)."
    ),
    probe: str = typer.Option("ethnic-bias", "--probe"),
    countries: str = typer.Option(None, "--countries", help="ISO-3 codes (default: all 50)."),
    k: int = typer.Option(100, "--k", min=1),
    indice_name: str = typer.Option(
        None, "--indice-name", help="Index on the server (default: the first it lists)."
    ),
    template: str = typer.Option("{adjective} body", "--template"),
    rule: str = typer.Option("exposed-genitalia", "--rule"),
    allow_private: bool = typer.Option(
        False, "--allow-private", help="Allow image URLs on loopback/private networks."
    ),
    clip_model: str = typer.Option(None, "--clip-model", help="CLIP of a local index (or 'tiny')."),
) -> None:
    """k nearest index images per country prompt, fetched safely and judged like the model side."""
    from analysis.errors import AuditError
    from analysis.laion.query import knn_query

    if probe != "ethnic-bias":
        raise AuditError(f"unknown probe {probe!r}; available: ethnic-bias")
    summary = knn_query(
        backend,
        out,
        countries=countries.split(",") if countries else None,
        k=k,
        indice_name=indice_name,
        template=template,
        rule=rule,
        allow_private=allow_private,
        clip_model=clip_model,
    )
    from analysis.figures import draw_all

    summary["figures"] = len(draw_all(out))  # the probe's country figure gains the dataset side
    print_summary(summary, title=f"knn query → {out}")
