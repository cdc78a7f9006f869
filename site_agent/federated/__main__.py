"""``python -m site_agent.federated --config site.yaml --recipe recipe.yaml``: a site joins federated training."""

from site_agent.federated.cli import join

if __name__ == "__main__":
    import typer

    typer.run(join)
