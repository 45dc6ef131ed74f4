"""File families: the single-step word tasks, the two-step read-then-write, and the held-out `symlink` and
`find_largest` (`.venv/bin/pytest tests/roll/test_suite.py`; in sandboxes: tests/roll/test_suite_docker.py).

The single-step instructions stay short and copyable: the tiny model has to learn them (issue 12).
"""

from __future__ import annotations

from roll.tasks.families.base import Draft, Words, check_exact, check_lines, family, lines_of, q


@family("create_file", category="files", steps=1, description="create a file holding one given word")
def create_file(w: Words) -> Draft:
    name, other = w.take(2)
    path = f"/app/{name}.txt"
    return Draft(
        instruction=f"Create the file {path} containing exactly {other}",
        setup=f"rm -f {path}",
        test=check_exact(path, other),
        steps=[f"echo {other} > {path}"],
    )


@family("make_dir", category="files", steps=1, description="create a nested directory")
def make_dir(w: Words) -> Draft:
    a, b = w.take(2)
    path = f"/app/{a}/{b}"
    return Draft(
        instruction=f"Create the directory {path}",
        setup=f"rm -rf /app/{a}",
        test=f'[ -d {path} ] || fail "{path} is not a directory"\n',
        steps=[f"mkdir -p {path}"],
    )


@family("append_line", category="files", steps=1, description="append one line to an existing file")
def append_line(w: Words) -> Draft:
    name, line = w.take(2)
    body = w.take(w.rng.randint(2, 4))
    path = f"/app/{name}.txt"
    return Draft(
        instruction=f"Append the line {line} to the end of {path}",
        setup=f"{lines_of(body)} > {path}",
        test=check_lines(path, [*body, line]),
        steps=[f"echo {line} >> {path}"],
    )


@family("rename_file", category="files", steps=1, description="rename a file, keeping its content")
def rename_file(w: Words) -> Draft:
    a, b, content = w.take(3)
    src, dst = f"/app/{a}.txt", f"/app/{b}.txt"
    return Draft(
        instruction=f"Rename {src} to {dst}",
        setup=f"echo {content} > {src}",
        test=f'[ ! -e {src} ] || fail "{src} still exists"\n' + check_exact(dst, content),
        steps=[f"mv {src} {dst}"],
    )


@family("move_file", category="files", steps=1, description="move a file into an existing directory")
def move_file(w: Words) -> Draft:
    a, folder, content, other = w.take(4)
    src, dst = f"/app/{a}.txt", f"/app/{folder}/{a}.txt"
    return Draft(
        instruction=f"Move {src} into the directory /app/{folder}",
        setup=f"mkdir -p /app/{folder} && echo {other} > /app/{folder}/{other}.txt && echo {content} > {src}",
        test=f'[ ! -e {src} ] || fail "{src} still exists"\n' + check_exact(dst, content),
        steps=[f"mv {src} /app/{folder}/"],
    )


@family("read_then_write", category="files", steps=2,
        description="read a word from one file, write it to another (needs the tool result)")  # fmt: skip
def read_then_write(w: Words) -> Draft:
    a, b, word = w.take(3)
    src, dst = f"/app/{a}.txt", f"/app/{b}.txt"
    return Draft(
        instruction=f"Write the word in {src} to {dst}",
        setup=f"echo {word} > {src} && rm -f {dst}",
        test=check_exact(dst, word),
        # The second call carries the word itself: what an agent writes after reading the first result.
        steps=[f"cat {src}", f"echo {word} > {dst}"],
    )


@family("symlink", category="files", steps=1, heldout_only=True, description="create a symbolic link to a file")
def symlink(w: Words) -> Draft:
    link, target, content = w.take(3)
    link_path, target_path = f"/app/{link}", f"/app/{target}.txt"
    return Draft(
        instruction=f"Create a symbolic link {link_path} that points to {target_path}",
        setup=f"echo {content} > {target_path} && rm -f {link_path}",
        test=(
            f'[ -L {link_path} ] || fail "{link_path} is not a symbolic link"\n'
            f'[ "$(readlink -f {link_path})" = {target_path} ] || fail "{link_path} does not point to {target_path}"\n'
            f'[ "$(cat {target_path})" = {content} ] || fail "{target_path} was changed"\n'
        ),
        steps=[f"ln -s {target_path} {link_path}"],
    )


@family("find_largest", category="files", steps=1, heldout_only=True, difficulty="medium",
        description="find the largest file in a directory tree, write its name")  # fmt: skip
def find_largest(w: Words) -> Draft:
    root, out = w.take(2)
    subdirs = w.take(2)
    names = w.take(w.rng.randint(4, 6))
    # Sizes at least 40 bytes apart, so the largest is clear whatever counts a newline.
    sizes = w.rng.sample(range(1, 30), len(names))
    setup = [f"mkdir -p /app/{root}/{subdirs[0]} /app/{root}/{subdirs[1]}"]
    largest = names[sizes.index(max(sizes))]
    for i, (name, size) in enumerate(zip(names, sizes, strict=True)):
        folder = f"/app/{root}" + ("" if i % 3 == 0 else f"/{subdirs[i % 3 - 1]}")
        setup.append(f"head -c {size * 40} /dev/zero | tr '\\0' x > {folder}/{name}.txt")
    answer = f"/app/{out}.txt"
    return Draft(
        instruction=f"Write the file name (like name.txt) of the largest file under /app/{root} to {answer}",
        setup="\n".join(setup),
        # The bare name is asked for; the full path is accepted too, it names the same file.
        test=(
            f'[ -f {answer} ] || fail "{answer} does not exist"\n'
            f'got="$(tr -d "[:space:]" < {answer})"\n'
            f'[ "$got" = {q(largest + ".txt")} ] || [ "$(basename "$got")" = {q(largest + ".txt")} ] '
            f'|| fail "{answer} does not name {largest}.txt"\n'
        ),
        steps=[f"find /app/{root} -type f -printf '%s %f\\n' | sort -n | tail -1", f"echo {largest}.txt > {answer}"],
        min_steps=1,
    )
