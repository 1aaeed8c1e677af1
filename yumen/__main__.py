from yumen.cli import run

run()
