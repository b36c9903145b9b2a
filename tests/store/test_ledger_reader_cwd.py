"""The ledger reader child runs the same gateway code as its parent, never a `gateway` package
that happens to sit in the working directory (`python -m` puts the cwd first on sys.path): a
checkout after a `git pull` the install did not follow, or a directory others can write to."""

import sqlite3
import subprocess

from gateway.store.ledger_reader import LedgerReader


def test_reader_command_does_not_import_from_the_working_directory(tmp_path):
    fake = tmp_path / "gateway" / "store"
    fake.mkdir(parents=True)
    (tmp_path / "gateway" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "ledger_reader.py").write_text(
        "open('SHADOW_RAN', 'w').write('x')\nraise SystemExit(3)\n")
    store = tmp_path / "gateway.db"
    sqlite3.connect(store).close()
    command = LedgerReader(str(store)).command()
    done = subprocess.run(command, cwd=tmp_path, input=b"", timeout=30, check=False,
                          capture_output=True)
    assert not (tmp_path / "SHADOW_RAN").exists(), (
        f"{command} ran {fake / 'ledger_reader.py'} from the working directory")
    # the real reader ran: it ends at EOF on its stdin with 0
    assert done.returncode == 0, done.stderr.decode()
