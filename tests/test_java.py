"""Finding a Java >= 21 for Pyserini before its JVM starts, on fake JDK folders (no Java needed), and the errors that
say what was found and how to install one."""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import PROJECT, pyserini_missing

from pyterrier_marginkd.data import java


def fake_jdk(folder, version: str, *, release: bool = True):
    """A folder laid out like a JDK: bin/java (a script printing the version) and, with ``release``, a release file."""
    (folder / "bin").mkdir(parents=True)
    script = folder / "bin" / "java"
    script.write_text(f'#!/bin/sh\necho \'openjdk version "{version}" 2025-01-01\' >&2\n')
    script.chmod(0o755)
    if release:
        (folder / "release").write_text(f'IMPLEMENTOR="Test"\nJAVA_VERSION="{version}"\n')
    return folder


@pytest.fixture()
def jvms(tmp_path, monkeypatch):
    """A JVM folder with Java 17, 21 and 25, and nothing else to find (no JAVA_HOME, no conda, no java on PATH)."""
    for name in ("JAVA_HOME", "CONDA_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(java.shutil, "which", lambda name: None)
    folder = tmp_path / "jvm"
    for name, version in (("java-17", "17.0.15"), ("jdk-21", "21.0.2"), ("temurin-25", "25.0.3")):
        fake_jdk(folder / name, version)
    return folder


@pytest.mark.parametrize("text, major", [("17.0.15", 17), ("1.8.0_392", 8), ("25", 25), ("21-ea", 21)])
def test_major_versions(text, major):
    assert java._major(text) == major


def test_the_release_file_or_java_version_gives_the_version(tmp_path):
    assert java.java_version(fake_jdk(tmp_path / "a", "21.0.1")) == 21
    assert java.java_version(fake_jdk(tmp_path / "b", "22.0.1", release=False)) == 22  # asks bin/java
    assert java.java_version(tmp_path / "nothing") is None


def test_newest_jdk_of_the_folders_without_java_home(jvms):
    assert java.find_java(folders=[str(jvms)]) == str((jvms / "temurin-25").resolve())


def test_java_home_is_used_when_it_is_new_enough(jvms, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(jvms / "jdk-21"))
    assert java.find_java(folders=[str(jvms)]) == str(jvms / "jdk-21")


def test_an_old_java_home_is_passed_over_with_a_warning(jvms, monkeypatch, caplog):
    monkeypatch.setenv("JAVA_HOME", str(jvms / "java-17"))
    with caplog.at_level(logging.WARNING, logger=java.__name__):
        assert java.find_java(folders=[str(jvms)]) == str((jvms / "temurin-25").resolve())
    assert "JAVA_HOME=" in caplog.text and "java-17" in caplog.text


def test_no_new_enough_java_says_what_was_found_and_how_to_install(jvms, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(jvms / "java-17"))
    with pytest.raises(RuntimeError) as error:
        java.find_java(folders=[str(jvms)], minimum=26)
    message = str(error.value)
    assert "needs Java >= 26" in message and "java-17 (Java 17)" in message and "(Java 25)" in message
    assert "JAVA_HOME=" in message and "apt-get install openjdk-21-jdk" in message


def test_nothing_found_at_all(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    monkeypatch.setattr(java.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"found no Java \(JAVA_HOME is unset; none in .*empty or on PATH\)"):
        java.find_java(folders=[str(tmp_path / "empty")])


def test_java_on_path_and_macos_layout_are_found(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    on_path = fake_jdk(tmp_path / "somewhere" / "jdk", "23.0.1")
    monkeypatch.setattr(java.shutil, "which", lambda name: str(on_path / "bin" / "java"))
    assert java.find_java(folders=[]) == str(on_path.resolve())
    fake_jdk(tmp_path / "jvms" / "zulu-24.jdk" / "Contents" / "Home", "24.0.1")
    assert java.find_java(folders=[str(tmp_path / "jvms")]).endswith("Contents/Home")


def test_without_pyserini_the_error_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(java.importlib.util, "find_spec", lambda name, *a: None if name == "pyserini" else real(name))
    with pytest.raises(ImportError, match=r"pip install pyterrier-marginkd\[pyserini\]"):
        java.init_pyserini()


# Starts Java from an older JDK in a fresh process (as PyTerrier's pt.java.init() would), then asks for Pyserini.
STARTED_BEFORE = textwrap.dedent("""
    import os, sys
    os.environ["JAVA_HOME"] = sys.argv[1]
    import jnius
    from pyterrier_marginkd.data.java import init_pyserini
    try:
        init_pyserini()
    except RuntimeError as err:
        print("RuntimeError:", err)
""")


def test_java_started_before_pyserini_is_named():
    reason = pyserini_missing()
    if reason:
        pytest.skip(reason)
    old = [home for folder in java.JVM_FOLDERS for home in java._installed_homes([folder])
           if (java.java_version(home) or java.MIN_JAVA) < java.MIN_JAVA]
    if not old:
        pytest.skip(f"no Java older than {java.MIN_JAVA} here to start first")
    done = subprocess.run([sys.executable, "-c", STARTED_BEFORE, str(old[0])], capture_output=True, text=True,
                          timeout=300, cwd=PROJECT, env={k: v for k, v in os.environ.items() if k != "JAVA_HOME"})
    assert "RuntimeError: Java was started in this process before Pyserini" in done.stdout, done.stdout + done.stderr
