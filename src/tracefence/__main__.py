from tracefence.cli import app

app()
