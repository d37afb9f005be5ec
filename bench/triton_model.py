"""The peer's side of bench.peers: a Triton python-backend model that serves an rnnserve step graph the way a
Triton user would write it — the sequence batcher ("oldest") hands over a batch of requests, each sequence's
recurrent state is kept here by correlation id, and the batch runs as one onnxruntime call.

Triton copies this file into its model repository as `model.py`; it runs in Triton's python-backend stub, not in
rnnserve, and imports only numpy, onnxruntime and Triton's own `triton_python_backend_utils`.
"""

import json

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters["threads"]["string_value"])
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as rnnserve's runtime runs it
        self.session = ort.InferenceSession(parameters["onnx_path"]["string_value"], options, providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.step_input, self.answer = inputs[0].name, outputs[0].name  # rnnserve's step graphs: step first, then state
        self.state_inputs = [(i.name, [int(d) for d in i.shape[1:]]) for i in inputs[1:]]
        self.states = {}  # correlation id → this sequence's state, one array (batch 1) per state input

    def _state(self, sequence: int, start: bool) -> list:
        if start or sequence not in self.states:
            return [np.zeros([1, *shape], np.float32) for _, shape in self.state_inputs]
        return self.states[sequence]

    def execute(self, requests):
        """One onnxruntime call for the whole batch (every request carries one step of a different sequence)."""
        sequences, steps, states = [], [], []
        for request in requests:
            value = lambda name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()  # noqa: E731
            sequence, start = int(value("CORRID").reshape(-1)[0]), bool(value("START").reshape(-1)[0])
            sequences.append((sequence, bool(value("END").reshape(-1)[0])))
            steps.append(np.array(value(self.step_input), copy=True))  # a view into the request, freed after it
            states.append(self._state(sequence, start))
        feeds = {self.step_input: np.concatenate(steps)}
        for k, (name, _) in enumerate(self.state_inputs):
            feeds[name] = np.concatenate([state[k] for state in states])
        answer, *next_state = self.session.run(None, feeds)
        responses = []
        for row, (sequence, end) in enumerate(sequences):
            if end:
                self.states.pop(sequence, None)
            else:
                self.states[sequence] = [s[row:row + 1].copy() for s in next_state]
            tensor = pb_utils.Tensor(self.answer, answer[row:row + 1])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
