# Copyright 2026 The trl_sail Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""A file-backed stand-in for `huggingface_hub.HfApi`, for tests.

`LocalHubApi(root)` stores every (repo, revision) as a directory `root/<repo_type>/<repo_id>/<revision>/`, so
`DiffusionPipeline.from_pretrained(api.local_path(repo_id, "round-1"))` loads what was pushed to branch `round-1`.
`use_local_hub(monkeypatch, root)` makes the product's Hub client (`trl_sail.artifacts.HfApi`, the one place it is
built) this stand-in.
"""

import os
import shutil
from dataclasses import dataclass
from fnmatch import fnmatch


@dataclass
class RepoUrl:
    repo_id: str


class LocalHubApi:
    """The subset of `HfApi` trl_sail uses: `create_repo`, `create_branch`, `upload_folder`."""

    def __init__(self, root: str):
        self.root = root
        self.uploads: list[tuple[str, str, str]] = []  # (repo_type, repo_id, revision), in push order

    def local_path(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        return os.path.join(self.root, repo_type, repo_id, revision)

    def create_repo(self, repo_id: str, token=None, private=None, exist_ok=False, repo_type: str | None = None, **_):
        path = self.local_path(repo_id, "main", repo_type or "model")
        if os.path.isdir(path) and not exist_ok:
            raise FileExistsError(f"Repo {repo_id} exists.")
        os.makedirs(path, exist_ok=True)
        return RepoUrl(repo_id)

    def create_branch(self, repo_id: str, branch: str, token=None, exist_ok=False, repo_type: str | None = None, **_):
        main = self.local_path(repo_id, "main", repo_type or "model")
        path = self.local_path(repo_id, branch, repo_type or "model")
        if os.path.isdir(path):
            if not exist_ok:
                raise FileExistsError(f"Branch {branch} exists.")
            return
        shutil.copytree(main, path)

    def upload_folder(
        self,
        repo_id: str,
        folder_path: str,
        revision: str | None = None,
        commit_message=None,
        token=None,
        repo_type: str | None = None,
        ignore_patterns=None,
        **_,
    ):
        revision = revision or "main"
        target = self.local_path(repo_id, revision, repo_type or "model")
        os.makedirs(target, exist_ok=True)
        for directory, _, files in os.walk(folder_path):
            for name in files:
                source = os.path.join(directory, name)
                relative = os.path.relpath(source, folder_path)
                if any(fnmatch(relative, pattern) for pattern in ignore_patterns or []):
                    continue
                os.makedirs(os.path.dirname(os.path.join(target, relative)), exist_ok=True)
                shutil.copy2(source, os.path.join(target, relative))
        self.uploads.append((repo_type or "model", repo_id, revision))


def use_local_hub(monkeypatch, root: str) -> LocalHubApi:
    """Replace the Hub client trl_sail builds by one `LocalHubApi(root)`, returned (its `uploads` list every push)."""
    hub = LocalHubApi(root)
    monkeypatch.setattr("trl_sail.artifacts.HfApi", lambda *args, **kwargs: hub)
    return hub
