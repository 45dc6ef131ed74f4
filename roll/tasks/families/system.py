"""System families: git_ops, permissions, archive, env_process (`.venv/bin/pytest tests/roll/test_suite.py`;
in sandboxes: tests/roll/test_suite_docker.py). Each instance picks one variant; tests inspect the outcome
(the repository, the mode bits, the archive's members, the process table), never the commands used.
"""

from __future__ import annotations

from roll.tasks.families.base import Draft, Words, check_exact, family, q

GIT_CONFIG = (
    'git config --global user.name "ALE Suite" && git config --global user.email suite@ale.invalid '
    "&& git config --global init.defaultBranch main"
)


def _git_repo(repo: str, files: dict[str, str], message: str) -> str:
    """Setup lines: a repository at `repo` with `files` committed once."""
    writes = " && ".join(f"echo {q(text)} > {name}" for name, text in files.items())
    return (
        f"rm -rf {repo} && mkdir -p {repo} && cd {repo} && git init -q && {writes} "
        f"&& git add -A && git commit -q -m {q(message)} && cd /app"
    )


@family("git_ops", category="git", steps=1, difficulty="medium",
        description="init and commit, branch, commit changes, or tag in a git repository")  # fmt: skip
def git_ops(w: Words) -> Draft:
    name, first, second = w.take(3)
    repo = f"/app/{name}"
    git = f"git -C {repo}"
    message = " ".join(w.take(2))
    variant = w.rng.choice(["init_commit", "branch", "commit_all", "tag"])
    head_is = f'[ "$({git} rev-parse HEAD 2>/dev/null)" ] || fail "{repo} has no commit"\n'
    if variant == "init_commit":
        setup = f"rm -rf {repo} && mkdir -p {repo} && echo {second} > {repo}/{first}.txt"
        instruction = f'Make {repo} a git repository and commit {first}.txt in it with the message "{message}"'
        test = (
            head_is + f'[ "$({git} log -1 --format=%s)" = {q(message)} ] || fail "the last commit message is wrong"\n'
            f'[ "$({git} show HEAD:{first}.txt)" = {second} ] || fail "{first}.txt is not committed"\n'
        )
        steps = [f'cd {repo} && git init && git add {first}.txt && git commit -m "{message}"']
    elif variant == "branch":
        setup = _git_repo(repo, {f"{first}.txt": second}, message)
        branch = w.one()
        instruction = f"Create a branch named {branch} in the git repository {repo}"
        test = (
            f'[ "$({git} rev-parse -q --verify refs/heads/{branch})" = "$({git} rev-parse HEAD)" ] '
            f'|| fail "no branch {branch} at the last commit"\n'
        )
        steps = [f"{git} branch {branch}"]
    elif variant == "commit_all":
        new, text = w.take(2)
        setup = _git_repo(repo, {f"{first}.txt": second}, " ".join(w.take(2)))
        setup += f" && echo {text} >> {repo}/{first}.txt && echo {text} > {repo}/{new}.txt"
        instruction = f'Commit all changes in {repo}, new files included, with the message "{message}"'
        test = (
            f'[ "$({git} log -1 --format=%s)" = {q(message)} ] || fail "the last commit message is wrong"\n'
            f'[ -z "$({git} status --porcelain)" ] || fail "changes are left uncommitted"\n'
            f'[ "$({git} show HEAD:{new}.txt)" = {text} ] || fail "{new}.txt is not committed"\n'
        )
        steps = [f'cd {repo} && git add -A && git commit -m "{message}"']
    else:
        tag = w.one()
        setup = _git_repo(repo, {f"{first}.txt": second}, message)
        instruction = f"Tag the latest commit of the git repository {repo} as {tag}"
        test = (
            f'[ "$({git} rev-parse -q --verify "refs/tags/{tag}^{{commit}}")" = "$({git} rev-parse HEAD)" ] '
            f'|| fail "no tag {tag} on the last commit"\n'
        )
        steps = [f"{git} tag {tag}"]
    return Draft(instruction=instruction, setup=f"{GIT_CONFIG}\n{setup}", test=test, steps=steps)


def _mode_is(path: str, mode: str) -> str:
    return f'[ "$(stat -c %a {path})" = {mode} ] || fail "{path} has mode $(stat -c %a {path}), not {mode}"\n'


@family("permissions", category="system", steps=1, description="make a script executable or set mode bits")
def permissions(w: Words) -> Draft:
    name, word = w.take(2)
    variant = w.rng.choice(["executable", "read_only", "mode"])
    if variant == "executable":
        path = f"/app/{name}.sh"
        return Draft(
            instruction=f"Make {path} executable",
            setup=f"printf '#!/bin/sh\\necho {word}\\n' > {path} && chmod 644 {path}",
            test=(
                f'[ "$(stat -c %A {path} | cut -c4)" = x ] || fail "{path} is not executable by its owner"\n'
                f'[ "$({path})" = {word} ] || fail "{path} does not run"\n'
            ),
            steps=[f"chmod +x {path}"],
        )
    if variant == "read_only":
        path = f"/app/{name}.txt"
        return Draft(
            instruction=f"Make {path} read-only for everyone (mode 444)",
            setup=f"echo {word} > {path} && chmod 644 {path}",
            test=_mode_is(path, "444") + check_exact(path, word),
            steps=[f"chmod 444 {path}"],
        )
    mode = w.rng.choice(["700", "750", "711", "770", "705"])  # never the 755 it starts with
    path = f"/app/{name}"
    return Draft(
        instruction=f"Set the mode of the directory {path} to {mode}",
        setup=f"mkdir -p {path} && echo {word} > {path}/{word}.txt && chmod 755 {path}",
        test=_mode_is(path, mode) + f'[ -f {path}/{word}.txt ] || fail "{path}/{word}.txt is gone"\n',
        steps=[f"chmod {mode} {path}"],
    )


_TAR_FLAG = {"gz": "z", "bz2": "j", "xz": "J"}


def _archive_check(archive: str, folder: str, files: dict[str, str]) -> str:
    """Test lines: `archive` is a gzip tar holding, under some path ending in folder/NAME, each file."""
    script = (
        "import sys, tarfile\n"
        f"want = {files!r}\n"
        f"with tarfile.open({archive!r}, 'r:gz') as t:\n"
        "    found = {}\n"
        "    for m in t.getmembers():\n"
        "        path = '/' + m.name.lstrip('./')\n"
        "        for name in want:\n"
        f"            if m.isfile() and path.endswith('/{folder}/' + name):\n"
        "                found[name] = t.extractfile(m).read().decode().strip()\n"
        "sys.exit(0 if found == want else 1)\n"
    )
    return (
        f'[ -f {archive} ] || fail "{archive} does not exist"\n'
        f'python3 -c {q(script)} || fail "{archive} is not a gzip tar of {folder}/ with its files"\n'
    )


@family("archive", category="system", steps=1, difficulty="medium",
        description="create a tar.gz of a folder, or extract a tar.gz / tar.bz2 / tar.xz")  # fmt: skip
def archive(w: Words) -> Draft:
    folder, target = w.take(2)
    names = w.take(w.rng.randint(2, 3))
    files = {f"{n}.txt": w.one() for n in names}
    if w.rng.random() < 0.5:
        path = f"/app/{folder}.tar.gz"
        writes = " && ".join(f"echo {text} > /app/{folder}/{name}" for name, text in files.items())
        return Draft(
            instruction=f"Create a gzip-compressed tar archive {path} of the directory /app/{folder}",
            setup=f"rm -rf /app/{folder} {path} && mkdir -p /app/{folder} && {writes}",
            test=_archive_check(path, folder, files),
            steps=[f"tar -czf {path} -C /app {folder}"],
        )
    kind = w.rng.choice(list(_TAR_FLAG))
    path = f"/app/{folder}.tar.{kind}"
    stage = f"/tmp/ale-{folder}"
    writes = " && ".join(f"echo {text} > {stage}/{name}" for name, text in files.items())
    setup = (
        f"rm -rf {stage} /app/{target} && mkdir -p {stage} && {writes} "
        f"&& tar -c{_TAR_FLAG[kind]}f {path} -C {stage} {' '.join(files)} && rm -rf {stage}"
    )
    return Draft(
        instruction=f"Extract the archive {path} into the directory /app/{target}",
        setup=setup,
        test="".join(check_exact(f"/app/{target}/{name}", text) for name, text in files.items()),
        steps=[f"mkdir -p /app/{target} && tar -xf {path} -C /app/{target}"],
    )


def _start(name: str, env: dict[str, str]) -> str:
    """Setup line: a long sleep running as the process NAME (a copy of sleep, so comm and argv agree), in its
    own session with no terminal, so it outlives the setup command; env = exactly its environment."""
    envs = " ".join(f"{k}={v}" for k, v in env.items())
    return (
        f"mkdir -p /opt/ale && cp /bin/sleep /opt/ale/{name} "
        f"&& setsid -f env -i {envs} /opt/ale/{name} 86400 >/dev/null 2>&1 </dev/null"
    )


@family("env_process", category="system", steps=1, difficulty="medium",
        description="find a running process's PID, or read an environment variable it was started with")  # fmt: skip
def env_process(w: Words) -> Draft:
    name, out = w.take(2)
    decoy = w.one(unlike=[name])  # so that `pgrep NAME` without -x finds one process too
    answer = f"/app/{out}.txt"
    if w.rng.random() < 0.5:
        return Draft(
            instruction=f"A process named {name} is running. Write its PID to {answer}",
            setup=f"{_start(name, {'PATH': '/usr/bin:/bin'})}\n{_start(decoy, {'PATH': '/usr/bin:/bin'})}",
            test=(
                f'[ -f {answer} ] || fail "{answer} does not exist"\n'
                f'pid="$(tr -d "[:space:]" < {answer})"\n'
                f'[ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = {name} ] '
                f'|| fail "{answer} does not hold the PID of {name}"\n'
            ),
            steps=[f"pgrep -x {name} > {answer}"],
        )
    key, value, other = w.one().upper(), w.one(), w.one()
    return Draft(
        instruction=f"The running process {name} has the environment variable {key}. Write its value to {answer}",
        setup=f"{_start(name, {key: value, 'PATH': '/usr/bin:/bin'})}\n{_start(decoy, {key: other})}",
        test=check_exact(answer, value),
        steps=[f"tr '\\0' '\\n' < /proc/$(pgrep -x {name})/environ", f"echo {value} > {answer}"],
    )
