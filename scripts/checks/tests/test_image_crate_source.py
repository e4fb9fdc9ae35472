"""Where the image build takes its crates from (scripts/image/crate-source.sh,
run by the Dockerfile): a clone's .cargo-vendor/ holds its .gitignore alone,
so `docker build .` fetches the crates from crates.io; once
`cargo vendor` has filled it, the build reads them from there, offline; and
git never sees the vendored crates.
"""

import os
import shutil
import subprocess

from conftest import ROOT

IMAGE = ROOT / "scripts" / "image"
PLACEHOLDER = ROOT / ".cargo-vendor" / ".gitignore"


def clone_vendor_dir(parent):
    """.cargo-vendor/ as a clone has it: the committed .gitignore alone."""
    vendor = parent / ".cargo-vendor"
    vendor.mkdir()
    shutil.copy(PLACEHOLDER, vendor)
    return vendor


def vendor_crate(vendor, name):
    """A crate as `cargo vendor` leaves it: its folder with a checksum file."""
    crate = vendor / name
    (crate / "src").mkdir(parents=True)
    (crate / "src" / "lib.rs").write_text("")
    (crate / ".cargo-checksum.json").write_text('{"files":{},"package":"0"}')


def choose_crate_source(vendor, cargo_home):
    proc = subprocess.run(
        ["bash", str(IMAGE / "crate-source.sh"), str(vendor), str(IMAGE / "cargo-config.toml")],
        env={"PATH": os.environ["PATH"], "CARGO_HOME": str(cargo_home)},
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_clone_builds_from_crates_io(tmp_path):
    cargo_home = tmp_path / "cargo"
    said = choose_crate_source(clone_vendor_dir(tmp_path), cargo_home)
    assert "fetching them from crates.io" in said, said
    assert not (cargo_home / "config.toml").exists()


def test_vendored_crates_are_read_offline(tmp_path):
    vendor = clone_vendor_dir(tmp_path)
    vendor_crate(vendor, "serde-1.0.229")
    vendor_crate(vendor, "anyhow-1.0.105")
    cargo_home = tmp_path / "cargo"
    said = choose_crate_source(vendor, cargo_home)
    assert "2 vendored" in said and "offline" in said, said
    config = (cargo_home / "config.toml").read_text()
    assert config == (IMAGE / "cargo-config.toml").read_text()
    assert 'replace-with = "vendored-sources"' in config and "offline = true" in config


def test_git_keeps_the_placeholder_and_ignores_vendored_crates(tmp_path):
    vendor = clone_vendor_dir(tmp_path)
    vendor_crate(vendor, "serde-1.0.229")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=30)
    untracked = subprocess.run(
        ["git", "-C", str(tmp_path), "status", "--porcelain", "--untracked-files=all"],
        capture_output=True, text=True, check=True, timeout=30).stdout.split("\n")
    assert [line for line in untracked if line] == ["?? .cargo-vendor/.gitignore"]
