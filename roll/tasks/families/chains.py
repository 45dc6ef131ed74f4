"""Families that need the tool results: multi_step_chain (5 calls in order, each using the previous result)
and error_recovery (the obvious first command fails; the agent must read the error and adapt)
(`.venv/bin/pytest tests/roll/test_suite.py`; in sandboxes: tests/roll/test_suite_docker.py).
"""

from __future__ import annotations

from roll.tasks.families.base import Draft, Words, check_exact, family, write_file

HOPS = 4  # files read in order; with the final write, 5 tool calls


@family("multi_step_chain", category="chain", steps=HOPS + 1, difficulty="medium",
        description="follow a chain of files, each naming the next, then write the word at its end")  # fmt: skip
def multi_step_chain(w: Words) -> Draft:
    folder, out = w.take(2)
    names = w.take(HOPS)
    word = w.one()
    decoys = w.take(3)
    paths = [f"/app/{folder}/{n}.txt" for n in names]
    # Each file holds the path of the next; the last holds the word. Decoy files form a chain of their own
    # that ends in another word, so reading every file in the folder does not give the answer away.
    setup = [f"rm -rf /app/{folder} && mkdir -p /app/{folder}"]
    setup += [f"echo {nxt} > {cur}" for cur, nxt in zip(paths, paths[1:], strict=False)]
    setup.append(f"echo {word} > {paths[-1]}")
    decoy_paths = [f"/app/{folder}/{d}.txt" for d in decoys]
    setup += [f"echo {nxt} > {cur}" for cur, nxt in zip(decoy_paths, decoy_paths[1:], strict=False)]
    setup.append(f"echo {w.one()} > {decoy_paths[-1]}")
    answer = f"/app/{out}.txt"
    return Draft(
        instruction=(
            f"Read {paths[0]}. It names the next file to read, and so on; the last file holds a word. "
            f"Write that word to {answer}"
        ),
        setup="\n".join(setup),
        test=check_exact(answer, word),
        # One call per hop, each carrying what the previous result said, as an agent would type it.
        steps=[f"cat {p}" for p in paths] + [f"echo {word} > {answer}"],
    )


@family("error_recovery", category="recovery", steps=2, difficulty="medium",
        description="the obvious first command fails (missing folder, compressed file, no `python`, no exec bit)")  # fmt: skip
def error_recovery(w: Words) -> Draft:
    variant = w.rng.choice(["missing_dir", "compressed", "no_python", "not_executable"])
    if variant == "missing_dir":
        a, b, name, word = w.take(4)
        path = f"/app/{a}/{b}/{name}.txt"
        return Draft(
            instruction=f"Create the file {path} containing exactly {word}",
            setup=f"rm -rf /app/{a}",
            test=check_exact(path, word),
            steps=[f"echo {word} > {path}", f"mkdir -p /app/{a}/{b} && echo {word} > {path}"],
            solution=f"mkdir -p /app/{a}/{b} && echo {word} > {path}",
        )
    if variant == "compressed":
        name, out, word = w.take(3)
        path, answer = f"/app/{name}.txt", f"/app/{out}.txt"
        return Draft(
            instruction=f"Write the word in {path} to {answer}",
            # Only the gzipped file exists: `cat` fails, `ls` shows {name}.txt.gz.
            setup=f"echo {word} > {path} && gzip -f {path}",
            test=check_exact(answer, word),
            steps=[f"cat {path}", "ls /app", f"zcat {path}.gz", f"echo {word} > {answer}"],
            solution=f"zcat {path}.gz > {answer}",
        )
    if variant == "no_python":
        name, out = w.take(2)
        parts = w.take(2)
        script, answer = f"/app/{name}.py", f"/app/{out}.txt"
        # The script computes its word, so the answer is not sitting in its text.
        return Draft(
            instruction=f"Run the Python script {script} with python and write what it prints to {answer}",
            setup=write_file(script, f'print("{parts[0]}"[::-1] + "-" + "{parts[1]}".upper())\n'),
            test=check_exact(answer, f"{parts[0][::-1]}-{parts[1].upper()}"),
            steps=[f"python {script} > {answer}", f"python3 {script} > {answer}"],
            solution=f"python3 {script} > {answer}",
        )
    name, out, word = w.take(3)
    script, answer = f"/app/{name}.sh", f"/app/{out}.txt"
    return Draft(
        instruction=f"Run {script} and write what it prints to {answer}",
        setup=f"printf '#!/bin/bash\\necho {word} | rev\\n' > {script} && chmod 644 {script}",
        test=check_exact(answer, word[::-1]),
        steps=[f"{script} > {answer}", f"bash {script} > {answer}"],
        solution=f"bash {script} > {answer}",
    )
