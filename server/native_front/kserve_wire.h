// KServe's ModelStreamInfer messages in protobuf's wire format, for the native front end's plain steps: a request
// read far enough to order it by sequence and to tell whether it is a plain step, and a plain step's answer written.
//
// A plain step is the request Triton's clients send for a sequence, in its usual form: one `tokens` INT64 [1, n]
// input (1 <= n <= 16, in int64_contents or one raw entry), sequence_id (a non-zero int64 or uint64, or a non-empty
// string) with bool sequence_start and sequence_end and any parameter the servicer does not read, and no output or
// one output named without parameters. Anything else — another field, a field twice, sequence_position, a string
// that is not UTF-8 — is not plain and goes to the
// Python servicer whole, which parses it as protobuf does and answers or refuses it. So this reader never has to
// decide what protobuf would do with an unusual message; it only recognises the usual one.

#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace wire {

constexpr int kMaxPlainTokens = 16;
constexpr size_t kMaxSequenceIdBytes = 1024;  // a longer string id makes the request not plain (Python's buffer for a take's ids)

enum Type : uint32_t { kVarint = 0, kFixed64 = 1, kBytes = 2, kStartGroup = 3, kEndGroup = 4, kFixed32 = 5 };
constexpr int kMaxDepth = 100;  // groups within groups, as protobuf's parser allows

class Reader {
 public:
  explicit Reader(std::string_view bytes)
      : p_(reinterpret_cast<const uint8_t*>(bytes.data())), end_(p_ + bytes.size()) {}

  bool Done() const { return p_ == end_; }

  bool Varint(uint64_t* value) {
    uint64_t result = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ == end_) return false;
      uint8_t byte = *p_++;
      result |= uint64_t(byte & 0x7f) << shift;
      if (!(byte & 0x80)) {
        *value = result;
        return true;
      }
    }
    return false;
  }

  bool Tag(uint32_t* field, uint32_t* type) {
    uint64_t tag;
    if (!Varint(&tag) || tag > 0xffffffffu) return false;
    *field = static_cast<uint32_t>(tag >> 3);
    *type = static_cast<uint32_t>(tag & 7);
    return *field != 0;
  }

  bool Bytes(std::string_view* out) {
    uint64_t size;
    if (!Varint(&size) || size > static_cast<uint64_t>(end_ - p_)) return false;
    *out = std::string_view(reinterpret_cast<const char*>(p_), size);
    p_ += size;
    return true;
  }

  bool Fixed(size_t size) {
    if (size > static_cast<size_t>(end_ - p_)) return false;
    p_ += size;
    return true;
  }

  // Past a field the reader does not use, `field` being its number (a group, of old protobuf, ends at its own).
  bool Skip(uint32_t type, uint32_t field, int depth = 0) {
    uint64_t ignored;
    std::string_view bytes;
    switch (type) {
      case kVarint: return Varint(&ignored);
      case kFixed64: return Fixed(8);
      case kBytes: return Bytes(&bytes);
      case kFixed32: return Fixed(4);
      case kStartGroup:
        if (depth >= kMaxDepth) return false;
        for (;;) {
          uint32_t inner, inner_type;
          if (!Tag(&inner, &inner_type)) return false;
          if (inner_type == kEndGroup) return inner == field;
          if (!Skip(inner_type, inner, depth + 1)) return false;
        }
      default: return false;  // an end without its start
    }
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

inline bool Utf8(std::string_view text) {
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    uint8_t c = *p++;
    if (c < 0x80) continue;
    int more;
    uint32_t code;
    if ((c & 0xe0) == 0xc0) {
      more = 1, code = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      more = 2, code = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      more = 3, code = c & 0x07;
    } else {
      return false;
    }
    if (end - p < more) return false;
    for (int i = 0; i < more; ++i) {
      if ((p[i] & 0xc0) != 0x80) return false;
      code = (code << 6) | (p[i] & 0x3f);
    }
    p += more;
    static constexpr uint32_t kLeast[] = {0, 0x80, 0x800, 0x10000};
    if (code < kLeast[more] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return false;
  }
  return true;
}

// An InferParameter: which of its oneof was set last (its field number; 0: none) and its value.
struct Parameter {
  uint32_t kind = 0;
  uint64_t number = 0;
  std::string_view text;
};

inline bool ReadParameter(std::string_view bytes, Parameter* parameter, bool* unusual) {
  Reader reader(bytes);
  while (!reader.Done()) {
    uint32_t field, type;
    if (!reader.Tag(&field, &type)) return false;
    if ((field == 1 || field == 2 || field == 5) && type == kVarint) {
      if (!reader.Varint(&parameter->number)) return false;
    } else if (field == 3 && type == kBytes) {
      if (!reader.Bytes(&parameter->text)) return false;
      if (!Utf8(parameter->text)) *unusual = true;  // protobuf refuses the message
    } else if (field == 4 && type == kFixed64) {
      if (!reader.Fixed(8)) return false;
    } else {
      if (!reader.Skip(type, field)) return false;
      *unusual = true;
      continue;
    }
    parameter->kind = field;
  }
  return true;
}

// A map<string, InferParameter> entry, as protobuf reads it: false where the bytes are not one. A value sent twice
// merges, as a message does (each read into the same Parameter); an unknown field makes protobuf set the whole entry
// aside as unknown, so that it is not in the map (*kept false).
inline bool ReadEntry(std::string_view bytes, std::string_view* key, Parameter* value, bool* kept, bool* unusual) {
  Reader reader(bytes);
  *value = Parameter();
  *kept = true;
  while (!reader.Done()) {
    uint32_t field, type;
    std::string_view part;
    if (!reader.Tag(&field, &type)) return false;
    if (field > 2 || type != kBytes) {
      if (!reader.Skip(type, field)) return false;
      *kept = false;
    } else if (!reader.Bytes(&part)) {
      return false;
    } else if (field == 1) {
      *key = part;
      if (!Utf8(part)) *unusual = true;  // protobuf refuses the message
    } else if (!ReadParameter(part, value, unusual)) {
      return false;
    }
  }
  if (!*kept) *unusual = true;
  return true;
}

// Triton's sequence_id as the Python servicer names it (str() of the number, or the string); "" for none.
inline std::string SequenceName(const Parameter& id) {
  if (id.kind == 2) return id.number ? std::to_string(static_cast<int64_t>(id.number)) : std::string();
  if (id.kind == 5) return id.number ? std::to_string(id.number) : std::string();
  if (id.kind == 3) return std::string(id.text);
  return std::string();
}

struct Step {
  std::string_view model_name, model_version, id, output;
  bool outputs_named = false;  // an output asked for by name (else: all of them)
  bool raw = false;  // the tokens came as raw contents: the answer is raw too
  bool start = false, end = false;
  int tokens = 0;
  int64_t token[kMaxPlainTokens] = {};
  std::string sequence;
};

// A repeated int64 field's values, as one varint or a packed run of them (protobuf accepts both), appended to
// values[*count...]; false past `max` values or on bytes that are not varints.
inline bool RepeatedVarint(Reader* reader, uint32_t type, int64_t* values, int* count, int max) {
  if (type == kVarint) {
    uint64_t value;
    if (!reader->Varint(&value) || *count >= max) return false;
    values[(*count)++] = static_cast<int64_t>(value);
    return true;
  }
  std::string_view packed_bytes;
  if (type != kBytes || !reader->Bytes(&packed_bytes)) return false;
  Reader packed(packed_bytes);
  while (!packed.Done()) {
    uint64_t value;
    if (!packed.Varint(&value) || *count >= max) return false;
    values[(*count)++] = static_cast<int64_t>(value);
  }
  return true;
}

// A plain step's input: tokens, INT64, [1, n], its values in int64_contents or in the one raw entry (`raw`).
inline bool ReadTokens(std::string_view input, const std::string_view* raw, Step* step) {
  Reader tensor(input);
  std::string_view name, datatype, contents;
  int shape = 0, tensor_names = 0, datatypes = 0, contents_seen = 0;
  int64_t dims[2] = {0, 0};
  while (!tensor.Done()) {
    uint32_t field, type;
    if (!tensor.Tag(&field, &type)) return false;
    if (field == 3) {
      if (!RepeatedVarint(&tensor, type, dims, &shape, 2)) return false;
      continue;
    }
    std::string_view value;
    if (type != kBytes || !tensor.Bytes(&value)) return false;
    if (field == 1) {
      name = value, ++tensor_names;
    } else if (field == 2) {
      datatype = value, ++datatypes;
    } else if (field == 5) {
      contents = value, ++contents_seen;
    } else {
      return false;  // parameters, or a field the servicer would look at
    }
  }
  if (tensor_names != 1 || datatypes != 1 || name != "tokens" || datatype != "INT64") return false;
  if (shape != 2 || dims[0] != 1 || dims[1] < 1 || dims[1] > kMaxPlainTokens) return false;
  step->tokens = static_cast<int>(dims[1]);
  if (raw != nullptr) {
    if (contents_seen || raw->size() != 8u * step->tokens) return false;
    std::memcpy(step->token, raw->data(), raw->size());  // little-endian, as KServe's raw contents are
    step->raw = true;
    return true;
  }
  if (contents_seen != 1) return false;
  Reader values(contents);
  int count = 0;
  while (!values.Done()) {
    uint32_t field, type;
    if (!values.Tag(&field, &type) || field != 3 || !RepeatedVarint(&values, type, step->token, &count, step->tokens)) return false;
  }
  return count == step->tokens;
}

// The one output a plain step may ask for: by name, without parameters.
inline bool ReadOutput(std::string_view tensor, Step* step) {
  Reader reader(tensor);
  int names = 0;
  while (!reader.Done()) {
    uint32_t field, type;
    std::string_view value;
    if (!reader.Tag(&field, &type) || field != 1 || type != kBytes || !reader.Bytes(&value)) return false;
    step->output = value, ++names;
  }
  if (names != 1 || step->output.empty() || !Utf8(step->output)) return false;
  step->outputs_named = true;
  return true;
}

// The key that orders a stream's requests of one sequence (model name and sequence id, as the servicer reads them;
// "" for a request of no sequence, or one that does not parse), and whether the request is a plain step, read into
// `step`. Of a field sent twice the last counts, as protobuf reads it (a plain step has each once).
inline bool ReadRequest(std::string_view bytes, std::string* key, Step* step) {
  Reader reader(bytes);
  bool plain = true;
  int inputs = 0, outputs = 0, raws = 0, names = 0, versions = 0, ids = 0;
  std::string_view model_name, input, output_tensor, raw;
  Parameter sequence_id, start, end;
  bool seen_id = false, seen_start = false, seen_end = false, unusual = false;
  key->clear();
  while (!reader.Done()) {
    uint32_t field, type;
    if (!reader.Tag(&field, &type)) return false;
    std::string_view value;
    if (type != kBytes || field > 7) {
      if (!reader.Skip(type, field)) return false;
      plain = false;
      continue;
    }
    if (!reader.Bytes(&value)) return false;
    switch (field) {
      case 1: model_name = value, ++names; break;
      case 2: step->model_version = value, ++versions; break;
      case 3: step->id = value, ++ids; break;
      case 4: {
        std::string_view name;
        Parameter parameter;
        bool kept;
        if (!ReadEntry(value, &name, &parameter, &kept, &unusual)) return false;
        if (!kept) {
          break;  // not in the map: protobuf keeps it as an unknown field
        } else if (name == "sequence_id") {
          plain &= !seen_id, seen_id = true, sequence_id = parameter;
        } else if (name == "sequence_start") {
          plain &= !seen_start, seen_start = true, start = parameter;
        } else if (name == "sequence_end") {
          plain &= !seen_end, seen_end = true, end = parameter;
        } else if (name == "sequence_position") {
          plain = false;
        }  // the servicer reads no other parameter (perf_analyzer sends triton_enable_empty_final_response)
        break;
      }
      case 5: input = value, ++inputs; break;
      case 6: output_tensor = value, ++outputs; break;
      case 7: raw = value, ++raws; break;
    }
  }
  step->model_name = model_name;
  std::string sequence = SequenceName(sequence_id);
  if (!sequence.empty()) *key = std::string(model_name) + '\0' + sequence;
  if (!plain || unusual || sequence.empty() || names != 1 || versions > 1 || ids > 1 || inputs != 1 || outputs > 1 || raws > 1) return false;
  if ((seen_start && start.kind != 1) || (seen_end && end.kind != 1)) return false;
  if (sequence.size() > kMaxSequenceIdBytes || sequence.find('\0') != std::string::npos || !Utf8(sequence)) return false;
  if (!Utf8(model_name) || !Utf8(step->model_version) || !Utf8(step->id)) return false;
  step->sequence = std::move(sequence);
  step->start = seen_start && start.number;
  step->end = seen_end && end.number;
  return ReadTokens(input, raws == 1 ? &raw : nullptr, step) && (outputs == 0 || ReadOutput(output_tensor, step));
}

// Writing

inline void PutVarint(std::string* out, uint64_t value) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>(value | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

inline void PutTag(std::string* out, uint32_t field, uint32_t type) { PutVarint(out, (field << 3) | type); }

inline void PutBytes(std::string* out, uint32_t field, std::string_view bytes) {
  PutTag(out, field, kBytes);
  PutVarint(out, bytes.size());
  out->append(bytes.data(), bytes.size());
}

inline size_t VarintSize(uint64_t value) {
  size_t size = 1;
  while (value >= 0x80) value >>= 7, ++size;
  return size;
}

// One output of a plain step's answer: its name, and its values [1, steps, width].
struct Output {
  std::string_view name;
  const float* values;
  int width;
};

// A ModelStreamInferResponse answering a plain step, as the Python servicer writes it: the model's name and version,
// the request's id, the sequence's position, and each output FP32 [1, steps, width], raw if the request was.
inline std::string Answer(std::string_view model_name, std::string_view model_version, std::string_view id, int64_t position,
                          const Output* outputs, int count, int steps, bool raw) {
  std::string response;
  PutBytes(&response, 1, model_name);
  PutBytes(&response, 2, model_version);
  if (!id.empty()) PutBytes(&response, 3, id);
  std::string parameter;  // the map entry {"sequence_position": {int64_param: position}}
  PutBytes(&parameter, 1, "sequence_position");
  std::string value;
  PutTag(&value, 2, kVarint);
  PutVarint(&value, static_cast<uint64_t>(position));
  PutBytes(&parameter, 2, value);
  PutBytes(&response, 4, parameter);
  for (int k = 0; k < count; ++k) {
    const Output& output = outputs[k];
    size_t floats = static_cast<size_t>(steps) * output.width;
    std::string_view values(reinterpret_cast<const char*>(output.values), floats * 4);
    std::string tensor;
    PutBytes(&tensor, 1, output.name);
    PutBytes(&tensor, 2, "FP32");
    std::string shape;
    PutVarint(&shape, 1);
    PutVarint(&shape, steps);
    PutVarint(&shape, output.width);
    PutBytes(&tensor, 3, shape);
    if (!raw) {
      std::string contents;
      PutBytes(&contents, 6, values);  // packed fp32_contents: the floats as they are, little-endian
      PutBytes(&tensor, 5, contents);
    }
    PutBytes(&response, 5, tensor);
  }
  if (raw) {
    for (int k = 0; k < count; ++k) {
      PutBytes(&response, 6, std::string_view(reinterpret_cast<const char*>(outputs[k].values),
                                              static_cast<size_t>(steps) * outputs[k].width * 4));
    }
  }
  std::string stream;
  stream.reserve(response.size() + 8);
  PutBytes(&stream, 2, response);
  return stream;
}

// A request's error on the stream, as the Python servicer writes it: the message, and the request's model, version
// and id as it sent them.
inline std::string Error(std::string_view message, std::string_view model_name, std::string_view model_version, std::string_view id) {
  std::string response;
  if (!model_name.empty()) PutBytes(&response, 1, model_name);
  if (!model_version.empty()) PutBytes(&response, 2, model_version);
  if (!id.empty()) PutBytes(&response, 3, id);
  std::string stream;
  PutBytes(&stream, 1, message);
  PutBytes(&stream, 2, response);
  return stream;
}

}  // namespace wire
