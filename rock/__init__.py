"""ROCK: the sandbox manager (REST v1 over Docker), its SDK (`rock.sdk`) and launcher (`rock.launch`)."""
