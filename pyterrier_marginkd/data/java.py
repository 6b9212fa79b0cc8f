"""Pyserini's prerequisites, met before its JVM starts: a Java >= 21 (Anserini 1.x needs it) and the environment its
import needs. Standard library only; Pyserini itself is imported by :func:`init_pyserini`."""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Iterator

#: the oldest Java whose class files Anserini 1.x can run on (older ones fail with UnsupportedClassVersionError)
MIN_JAVA = 21
#: folders that usually hold installed JDKs, one per subfolder (Linux packages, Temurin/Oracle/Zulu installers,
#: macOS, SDKMAN, IntelliJ, Windows installers)
JVM_FOLDERS = ("/usr/lib/jvm", "/usr/java", "/usr/local/java", "/opt/java", "/opt",
               "/Library/Java/JavaVirtualMachines", "~/Library/Java/JavaVirtualMachines", "~/.sdkman/candidates/java",
               "~/.jdks", "C:/Program Files/Java", "C:/Program Files/Eclipse Adoptium", "C:/Program Files/Microsoft")
#: the value given to OPENAI_API_KEY when it is unset: Pyserini builds an OpenAI client when it is imported and
#: that fails without a key; nothing here calls OpenAI
PLACEHOLDER_OPENAI_KEY = "unused-placeholder-set-by-pyterrier-marginkd"
INSTALL_HINT = ("install a JDK 21 or newer (e.g. `apt-get install openjdk-21-jdk`, `conda install -c conda-forge "
                "openjdk=21`, or Temurin from adoptium.net) and point JAVA_HOME at it")
PIP_HINT = "pip install pyterrier-marginkd[pyserini] (Pyserini needs Python >= 3.11 and Java >= 21)"
logger = logging.getLogger(__name__)


def _major(version: str) -> int | None:
    """The major version of a Java version string: '1.8.0_392' is 8, '21.0.2' is 21, '25' is 25."""
    parts = version.strip().split(".")
    match = re.match(r"\d+", parts[1] if parts[0] == "1" and len(parts) > 1 else parts[0])
    return int(match.group()) if match else None


def _java_binary(home: Path) -> Path | None:
    for name in ("java", "java.exe"):
        if (home / "bin" / name).is_file():
            return home / "bin" / name
    return None


def java_version(home: str | os.PathLike) -> int | None:
    """The major version of the Java installed at ``home`` (from its ``release`` file, else from ``java -version``);
    None when ``home`` holds no Java."""
    home = Path(home)
    java = _java_binary(home)
    if java is None:
        return None
    release = home / "release"
    if release.is_file():
        found = re.search(r'^JAVA_VERSION="([^"]+)"', release.read_text(errors="replace"), re.MULTILINE)
        if found:
            return _major(found.group(1))
    try:
        done = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "([^"]+)"', done.stderr + done.stdout)
    return _major(found.group(1)) if found else None


def _installed_homes(folders: Iterable[str]) -> Iterator[Path]:
    """Java homes in the usual places: each folder's subfolders (macOS: their Contents/Home), a conda environment's
    JDK, and the ``java`` first on PATH."""
    for folder in folders:
        folder = Path(folder).expanduser()
        try:
            entries = sorted(folder.iterdir()) if folder.is_dir() else []
        except OSError:
            continue
        for entry in entries:
            yield entry / "Contents" / "Home" if (entry / "Contents" / "Home").is_dir() else entry
    if os.environ.get("CONDA_PREFIX"):
        yield Path(os.environ["CONDA_PREFIX"]) / "lib" / "jvm"
    on_path = shutil.which("java")
    if on_path:
        yield Path(on_path).resolve().parent.parent


def find_java(minimum: int = MIN_JAVA, *, folders: Iterable[str] = JVM_FOLDERS) -> str:
    """The home folder of a Java >= ``minimum``: ``$JAVA_HOME`` when it is one, else the newest such JDK in the usual
    folders (:data:`JVM_FOLDERS`, a conda environment, the ``java`` on PATH).

    Raises a RuntimeError that lists every Java found (with its version) and says how to install one.
    """
    seen: list[str] = []
    given = os.environ.get("JAVA_HOME")
    if given:
        version = java_version(given)
        if version is not None and version >= minimum:
            return given
        seen.append(f"JAVA_HOME={given} ({f'Java {version}' if version else 'no Java there'})")
    found: dict[Path, int] = {}
    for home in _installed_homes(folders):
        real = home.resolve()
        if real in found or _java_binary(real) is None:
            continue
        version = java_version(real)
        if version is not None:
            found[real] = version
            seen.append(f"{home} (Java {version})")
    usable = [(version, str(home)) for home, version in found.items() if version >= minimum]
    if not usable:
        where = "; ".join(seen) or f"no Java (JAVA_HOME is unset; none in {', '.join(folders)} or on PATH)"
        raise RuntimeError(f"Pyserini (Anserini) needs Java >= {minimum}; found {where}. To fix: {INSTALL_HINT}")
    version, home = max(usable)
    if given:
        logger.warning("JAVA_HOME=%s is not a Java >= %d; using %s (Java %d) for Pyserini", given, minimum, home,
                       version)
    return home


def _running_java() -> tuple[int | None, str]:
    """Major version and home folder of the JVM running in this process."""
    from jnius import autoclass

    system = autoclass("java.lang.System")
    return _major(str(system.getProperty("java.specification.version"))), str(system.getProperty("java.home"))


def init_pyserini() -> str:
    """Make ``import pyserini.search.lucene`` work in this process, and do it: start Pyserini's JVM on a Java >= 21
    (:func:`find_java`, exported to this process as JAVA_HOME) with the environment its import needs. Returns the
    Java home in use. A second call does nothing more.

    Raises an ImportError naming the install command when Pyserini is missing, and a RuntimeError when no Java >= 21
    is found or when Java was already started in this process on an older Java or without Anserini's jar.
    """
    if importlib.util.find_spec("pyserini") is None:
        raise ImportError(f"Pyserini is not installed: {PIP_HINT}")
    # pyserini.search.lucene imports pyserini.encode, which builds an OpenAI client at import time and raises
    # OpenAIError without a key (any value will do). A key the user set is left alone; only a missing (or empty) one
    # gets this placeholder, for this process only.
    if not os.environ.get("OPENAI_API_KEY"):
        os.environ["OPENAI_API_KEY"] = PLACEHOLDER_OPENAI_KEY
    started_before = "jnius" in sys.modules  # importing jnius starts the JVM: its Java and classpath are fixed now
    if not started_before:
        os.environ["JAVA_HOME"] = find_java()  # pyjnius starts the JVM found at JAVA_HOME
    try:
        import pyserini.search.lucene  # noqa: F401  (starts the JVM with Anserini's jar)
    except Exception as err:
        if started_before:
            raise RuntimeError("Java was started in this process before Pyserini (e.g. by pt.java.init() or "
                               "pt.terrier), without Anserini's jar, and a running JVM cannot take more jars: call "
                               "mkd.init_pyserini() before anything starts Java "
                               f"({type(err).__name__}: {err})") from err
        raise
    version, home = _running_java()
    if version is None or version < MIN_JAVA:
        raise RuntimeError(f"this process's JVM runs Java {version} ({home}), started before Pyserini; Anserini "
                           f"needs Java >= {MIN_JAVA}: call mkd.init_pyserini() before anything starts Java, or "
                           f"{INSTALL_HINT}")
    return home
