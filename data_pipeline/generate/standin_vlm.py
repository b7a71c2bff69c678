"""A stand-in VLM for dry runs of `pairs=generate`: an OpenAI-compatible chat endpoint on 127.0.0.1
that answers without a model, for checking the plumbing on a CPU (docs/curation.md, "A CPU dry run").

    python -m liveditor.data_pipeline.generate.standin_vlm --port 8011
    liveditor-curate ... pairs=generate pairs.generate.vlm.base_url=http://127.0.0.1:8011/v1

An instruction request (the prompt of `instructions.instruction_prompt`) gets a schema-valid answer
for the requested category ("Apply a <category> edit to the clip.", its reverse, fixed captions and,
for categories about one object, "the main object"); an instruction-following check
(`vlm_check.check_prompt`) gets `{"score": --score}`. The answers say nothing about the frames:
pairs made with it are for testing the pipeline, never for training.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .instructions import OBJECT_AFTER_EDIT


def answer_for(prompt: str, score: int) -> str:
    """The stand-in's answer to one prompt."""
    if "Edit category: " in prompt:
        category = prompt.split("Edit category: ", 1)[1].split(":", 1)[0].strip()
        return json.dumps({"instruction": f"Apply a {category} edit to the clip.", "reverse_instruction": f"Undo the {category} edit.",
                           "source_caption": "the original clip", "target_caption": f"the clip after a {category} edit",
                           "edited_object": "the main object" if category in OBJECT_AFTER_EDIT else "", "category": category})
    if "Editing instruction: " in prompt:
        return json.dumps({"score": int(score), "reason": "stand-in VLM: a fixed score"})
    return "OK"


def prompt_text(body: dict) -> str:
    """The text parts of a chat request's first message, joined (a plain string is taken whole)."""
    content = (body.get("messages") or [{}])[0].get("content", "")
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content if p.get("type") == "text")


def chat_reply(text: str) -> dict:
    """An OpenAI chat-completions reply body whose `choices[0].message.content` is `text`."""
    return {"choices": [{"message": {"role": "assistant", "content": text}}]}


def make_server(port: int = 0, score: int = 8) -> ThreadingHTTPServer:
    """The server (not started: call `serve_forever`); `port=0` picks a free one (`server.server_address`)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path.rstrip("/").endswith("/chat/completions"):
                status, reply = 200, chat_reply(answer_for(prompt_text(body), score))
            else:
                status, reply = 404, {"error": f"no route {self.path}: POST <base_url>/chat/completions"}
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m liveditor.data_pipeline.generate.standin_vlm",
                                     description="A stand-in VLM endpoint for dry runs of pairs=generate (no model; answers "
                                                 "carry no meaning).")
    parser.add_argument("--port", type=int, default=8011, help="port on 127.0.0.1 (base_url http://127.0.0.1:<port>/v1)")
    parser.add_argument("--score", type=int, default=8, help="the instruction-following score every check gets (0-10)")
    args = parser.parse_args(argv)
    server = make_server(args.port, args.score)
    print(f"stand-in VLM at http://127.0.0.1:{server.server_address[1]}/v1 (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
