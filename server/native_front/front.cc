// rnnserve's native front end: gRPC's C++ server carrying the KServe service's messages, so the Python event
// loop no longer pays grpc.aio's own cost per message (an empty echo: 110-290 us of CPU a request on 2 cores).
//
// Every call, of any method, becomes events for Python: the call's start (with its method), each message read (its
// bytes, unparsed), the client's half-close and its cancellation. Python answers with the response messages' bytes
// and the call's status. So every answer, every error and every sequence rule stays the Python servicer's, as on
// --port. Events wait in one queue; an eventfd tells the event loop that the queue is not empty, and the loop takes
// everything waiting in one call (server/native_front/__init__.py).
//
// ModelStreamInfer is read further (kserve_wire.h). A request of a sequence waits here while an earlier request of
// the same sequence on the same stream is unanswered (so Python runs a stream's requests of one sequence in order and
// different sequences together); every request has a ticket, and its answer names it. A plain step — a sequence's
// step of a few token ids, the request Triton's clients send — reaches Python as a fixed-size record rather than bytes,
// all of a take's records in one array, and its answers come back in one call for a whole batch: written here from the
// engine's output arrays, with no protobuf or Python object per request (server/native_front/plain_steps.py).
//
// Threads: gRPC's callback threads run the reactors; the event loop thread calls rf_next, and queues its answers
// (rf_write, rf_answer*, rf_finish) for a writer thread of ours, which hands them to gRPC; an engine thread calls
// rf_hold as its onnxruntime call begins. No lock is held while gRPC is called, since gRPC may run a reactor's
// callback inline, on the calling thread, nor while the event loop is woken.
// A call lives in a shared_ptr held by the table of open calls and by itself until gRPC's OnDone, so a write for a
// call that has just ended is safely ignored.

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "kserve_wire.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

enum Kind : int32_t { kStart = 0, kMessage = 1, kHalfClose = 2, kCancel = 3 };

// Messages a stream may have read and not yet answered; beyond it reading waits (each request has one answer).
constexpr int kMaxUnanswered = 1024;
constexpr int kMaxRoutes = 1024;  // distinct (model, version, output) a plain step may name; beyond, steps go to Python whole
const char kStreamInfer[] = "/inference.GRPCInferenceService/ModelStreamInfer";

struct Event {
  uint64_t call;
  int32_t kind;
  uint64_t ticket;  // a ModelStreamInfer request's, for kMessage (0: another method's message)
  std::string data;  // the method for kStart, the message for kMessage
  uint64_t order;  // among events and steps, the order they were pushed in
};

// A plain step as Python takes it (plain_steps.py reads it as a numpy structured array: keep the two the same).
struct StepRecord {
  uint64_t ticket;
  uint64_t call;
  int64_t tokens[wire::kMaxPlainTokens];
  int32_t route;  // the (model name, version, output asked for) it names: rf_route
  int32_t steps;  // tokens used
  uint8_t start, end;
  uint8_t unused[6];
};
static_assert(sizeof(StepRecord) == 160, "plain_steps.py's STEP_RECORD");

struct QueuedStep {
  StepRecord record;
  std::string sequence;  // its sequence id, as Python names it
  uint64_t order;
};

// A ModelStreamInfer request between its reading and its answer.
struct Ticket {
  std::string sequence_key;  // its sequence's order key ("": none)
  std::string message;  // its bytes (a plain step keeps them, in case Python answers it as a message after all)
  bool plain = false;
  StepRecord record;  // a plain step's
  std::string sequence;  // a plain step's sequence id
  std::string model_name, model_version, id;  // as sent, for an error's answer
  bool raw = false;  // its answer is raw
};

// A ticket's request on its way to Python: taken under its call's lock, handed over after it (the hand-over may wake
// the event loop, a system call that would hold the lock, and every thread waiting for it, all the while).
struct Dispatch {
  uint64_t ticket = 0;  // 0: nothing to hand over
  bool plain = false;
  StepRecord record;
  std::string sequence;
  std::string message;
};

// What Python says of a route: the model's name and version as answers carry them, and the outputs they carry.
struct RouteAnswer {
  std::string model_name, model_version;
  std::vector<std::string> outputs;
  std::vector<int> widths;
};

// An answer from Python: a response message, or the call's status.
struct Outgoing {
  uint64_t call;
  bool finish;
  int code;
  std::string data;  // the message, or the status's message
};

// What rf_next hands Python: pointers into the events it took, valid until the next rf_next.
struct EventView {
  uint64_t call;
  int32_t kind;
  int32_t unused;
  const char* data;
  uint64_t size;
  uint64_t ticket;
};

class Front;

class Call : public grpc::ServerGenericBidiReactor {
 public:
  Call(Front* front, uint64_t id, bool ordered) : front_(front), id_(id), ordered_(ordered) {}
  void Begin(std::shared_ptr<Call> self, const std::string& method);
  void Write(std::string bytes) { Write(&bytes, 1); }
  void Write(std::string* responses, size_t count);  // in order, taking one lock for them all
  void End(const grpc::Status& status);

  // ModelStreamInfer's, from the event loop's thread: the tickets are answered (their requests, in `taken`, are no
  // longer open; a ticket not open is skipped), so their sequences' next requests, where one waits, go to Python.
  void Close(const uint64_t* tickets, int count, std::vector<std::pair<int, Ticket>>* taken);
  // A plain step that Python answers as a message after all: its bytes go to Python as a kMessage.
  void Defer(uint64_t ticket);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // The next response into write_buffer_. (Not with gRPC's buffer hint while more wait: on a call's first message,
  // which carries the initial metadata, the write never completes — grpc/grpc#34231 — and a stream hung.)
  void NextWriteLocked() {
    grpc::Slice slice(pending_.front().data(), pending_.front().size());
    write_buffer_ = grpc::ByteBuffer(&slice, 1);
    pending_.pop_front();
  }
  void Take(std::string bytes);
  void DispatchLocked(uint64_t ticket, Dispatch* dispatch);  // under order_mu_
  void Hand(Dispatch* dispatch);

  Front* front_;
  const uint64_t id_;
  const bool ordered_;  // ModelStreamInfer: requests get tickets and wait for their sequence's earlier ones
  std::shared_ptr<Call> self_;  // this call's own reference, until OnDone
  grpc::ByteBuffer read_buffer_;
  grpc::ByteBuffer write_buffer_;
  std::mutex mu_;
  std::deque<std::string> pending_;  // responses waiting for the write before them
  bool writing_ = false;
  bool paused_ = false;  // reading waits for answers
  int unanswered_ = 0;
  bool finishing_ = false;  // Finish asked for: it runs once the writes are out
  bool finished_ = false;
  grpc::Status status_;
  // an ordered call's, under order_mu_ (apart from mu_, the writes', which gRPC's threads and the writer take)
  std::mutex order_mu_;
  uint64_t next_ticket_ = 1;
  std::unordered_map<uint64_t, Ticket> open_;  // requests read and not yet answered
  std::unordered_map<std::string, std::deque<uint64_t>> waiting_;  // sequence with a request in Python → its next ones
  bool half_closed_ = false;  // the client has sent all it will: Python hears of it once every request is answered
};

class Service : public grpc::CallbackGenericService {
 public:
  explicit Service(Front* front) : front_(front) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override;

 private:
  Front* front_;
};

class Front {
 public:
  Front() : service_(this), event_fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)), writer_([this] { Send(); }) {}
  ~Front() {
    StopWriter();
    close(event_fd_);
  }

  int Start(const std::string& address, const char** names, const int* values, int count, std::string* error) {
    grpc::ServerBuilder builder;
    int port = 0;
    for (int i = 0; i < count; ++i) builder.AddChannelArgument(names[i], values[i]);
    builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
    builder.RegisterCallbackGenericService(&service_);
    server_ = builder.BuildAndStart();
    if (!server_ || port == 0) {
      *error = "cannot listen on " + address + ": the port is in use (another server?) or the address is not this machine's";
      server_.reset();
      return -1;
    }
    return port;
  }

  // Sends what is queued, ends every open call with `message`, then the server: its Shutdown waits for every call.
  void Stop(const std::string& message) {
    StopWriter();
    std::vector<std::shared_ptr<Call>> open;
    {
      std::lock_guard<std::mutex> lock(calls_mu_);
      stopping_ = true;
      for (auto& entry : calls_) open.push_back(entry.second);
    }
    for (auto& call : open) call->End(grpc::Status(grpc::StatusCode::UNAVAILABLE, message));
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  // From the event loop: queued for the writer thread, so that gRPC's write path (which StartWrite may run
  // inline, on the calling thread) costs the event loop nothing. One queue keeps a call's status after its writes.
  void Queue(Outgoing outgoing) {
    {
      std::lock_guard<std::mutex> lock(outgoing_mu_);
      outgoing_.push_back(std::move(outgoing));
    }
    outgoing_ready_.notify_one();
  }

  void QueueAll(std::vector<Outgoing>* batch) {
    if (batch->empty()) return;
    {
      std::lock_guard<std::mutex> lock(outgoing_mu_);
      for (auto& outgoing : *batch) outgoing_.push_back(std::move(outgoing));
    }
    outgoing_ready_.notify_one();
  }

  std::shared_ptr<Call> Open(const std::string& method) {
    std::lock_guard<std::mutex> lock(calls_mu_);
    uint64_t id = next_id_++;
    auto call = std::make_shared<Call>(this, id, method == kStreamInfer);
    calls_[id] = call;
    return call;
  }

  std::shared_ptr<Call> Find(uint64_t id) {
    std::lock_guard<std::mutex> lock(calls_mu_);
    auto found = calls_.find(id);
    return found == calls_.end() ? nullptr : found->second;
  }

  void Forget(uint64_t id) {
    std::lock_guard<std::mutex> lock(calls_mu_);
    calls_.erase(id);
  }

  bool Stopping() {
    std::lock_guard<std::mutex> lock(calls_mu_);
    return stopping_;
  }

  void Push(uint64_t call, Kind kind, std::string data, uint64_t ticket = 0) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(events_mu_);
      events_.push_back(Event{call, kind, ticket, std::move(data), next_order_++});
      wake = Signal();
    }
    if (wake) Wake();
  }

  // A plain step waits unsignalled while an engine is in onnxruntime (Hold): it could not join that call, and taken
  // with those that come meanwhile, once the call is over, it costs the event loop one take for all of them.
  void PushStep(const StepRecord& record, std::string sequence) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(events_mu_);
      steps_.push_back(QueuedStep{record, std::move(sequence), next_order_++});
      wake = holds_.load() == 0 && Signal();
    }
    if (wake) Wake();
  }

  // An engine's call begins (on), or its results are back on the event loop (off): then whether steps wait that
  // nothing has signalled (the event loop takes them itself, with no wake-up).
  bool Hold(bool on) {
    if (on) {
      ++holds_;
      return false;
    }
    std::lock_guard<std::mutex> lock(events_mu_);
    return --holds_ == 0 && !steps_.empty() && !signalled_;
  }

  // What waits, in the order it came, until a buffer is full: up to `max` events into `views`, and up to `max_steps`
  // plain steps into `steps` with their sequence ids, each ended by a 0 byte, in `arena`. The eventfd stays readable
  // while more wait.
  int Next(EventView* views, int max, StepRecord* steps, int max_steps, char* arena, size_t arena_size, int* step_count,
           size_t* arena_used) {
    std::lock_guard<std::mutex> lock(events_mu_);
    taken_.clear();
    int taken_steps = 0;
    size_t used = 0;
    for (;;) {
      bool event = !events_.empty() && (steps_.empty() || events_.front().order < steps_.front().order);
      if (event) {
        if (static_cast<int>(taken_.size()) >= max) break;
        taken_.push_back(std::move(events_.front()));
        events_.pop_front();
      } else if (!steps_.empty()) {
        const QueuedStep& step = steps_.front();
        size_t size = step.sequence.size() + 1;
        if (taken_steps >= max_steps || used + size > arena_size) break;
        steps[taken_steps++] = step.record;
        std::memcpy(arena + used, step.sequence.data(), step.sequence.size());
        arena[used + size - 1] = '\0';
        used += size;
        steps_.pop_front();
      } else {
        break;
      }
    }
    if (events_.empty() && steps_.empty()) {
      uint64_t count;
      ssize_t read_ = read(event_fd_, &count, sizeof count);
      (void)read_;
      signalled_ = false;
    }
    for (size_t i = 0; i < taken_.size(); ++i) {
      views[i] = EventView{taken_[i].call, taken_[i].kind, 0, taken_[i].data.data(), taken_[i].data.size(), taken_[i].ticket};
    }
    *step_count = taken_steps;
    *arena_used = used;
    return static_cast<int>(taken_.size());
  }

  // The route of a plain step: its (model name, version, output asked for), numbered in the order first seen; -1
  // once kMaxRoutes are known (a client naming ever new models must not grow this table).
  int Route(const wire::Step& step) {
    std::string key = std::string(step.model_name) + '\0' + std::string(step.model_version) + '\0';
    if (step.outputs_named) key += "=" + std::string(step.output);
    std::lock_guard<std::mutex> lock(routes_mu_);
    auto found = route_index_.find(key);
    if (found != route_index_.end()) return found->second;
    if (static_cast<int>(routes_.size()) >= kMaxRoutes) return -1;
    routes_.push_back(key);
    answers_.emplace_back();
    return route_index_[key] = static_cast<int>(routes_.size()) - 1;
  }

  std::string RouteText(int route) {
    std::lock_guard<std::mutex> lock(routes_mu_);
    return route >= 0 && route < static_cast<int>(routes_.size()) ? routes_[route] : std::string();
  }

  void SetAnswer(int route, RouteAnswer answer) {
    std::lock_guard<std::mutex> lock(routes_mu_);
    if (route >= 0 && route < static_cast<int>(answers_.size())) answers_[route] = std::move(answer);
  }

  RouteAnswer GetAnswer(int route) {
    std::lock_guard<std::mutex> lock(routes_mu_);
    return route >= 0 && route < static_cast<int>(answers_.size()) ? answers_[route] : RouteAnswer();
  }

  int event_fd() const { return event_fd_; }
  bool plain() const { return plain_.load(); }
  void set_plain(bool on) { plain_ = on; }

 private:
  bool Signal() {  // under events_mu_: whether the eventfd must be written
    bool wake = !signalled_;
    signalled_ = true;
    return wake;
  }

  void Wake() {
    uint64_t one = 1;
    ssize_t written = write(event_fd_, &one, sizeof one);
    (void)written;
  }

  void StopWriter() {
    if (!writer_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(outgoing_mu_);
      writer_stopping_ = true;
    }
    outgoing_ready_.notify_one();
    writer_.join();
  }

  // The writer thread: everything queued, in order, until Stop.
  void Send() {
    pthread_setname_np(pthread_self(), "rnnserve-writer");  // as top -H and /proc name it
    std::deque<Outgoing> batch;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(outgoing_mu_);
        outgoing_ready_.wait(lock, [this] { return !outgoing_.empty() || writer_stopping_; });
        if (outgoing_.empty()) return;
        batch.swap(outgoing_);
      }
      std::vector<std::string> writes;
      for (size_t i = 0; i < batch.size();) {  // a call's consecutive responses go to it together
        Outgoing& outgoing = batch[i];
        std::shared_ptr<Call> call = Find(outgoing.call);
        if (outgoing.finish) {
          if (call) call->End(grpc::Status(static_cast<grpc::StatusCode>(outgoing.code), outgoing.data));
          ++i;
          continue;
        }
        writes.clear();
        for (; i < batch.size() && batch[i].call == outgoing.call && !batch[i].finish; ++i) writes.push_back(std::move(batch[i].data));
        if (call) call->Write(writes.data(), writes.size());  // else ended meanwhile
      }
      batch.clear();
    }
  }

  Service service_;
  std::unique_ptr<grpc::Server> server_;
  const int event_fd_;
  std::mutex calls_mu_;
  std::unordered_map<uint64_t, std::shared_ptr<Call>> calls_;
  uint64_t next_id_ = 1;
  bool stopping_ = false;
  std::mutex events_mu_;
  std::deque<Event> events_;
  std::deque<QueuedStep> steps_;
  std::atomic<int> holds_{0};  // engines in onnxruntime now
  std::atomic<bool> plain_{true};  // plain steps are read here (else every request goes to Python as bytes)
  uint64_t next_order_ = 0;
  std::vector<Event> taken_;
  bool signalled_ = false;
  std::mutex routes_mu_;
  std::vector<std::string> routes_;
  std::unordered_map<std::string, int> route_index_;
  std::vector<RouteAnswer> answers_;
  std::mutex outgoing_mu_;
  std::condition_variable outgoing_ready_;
  std::deque<Outgoing> outgoing_;
  bool writer_stopping_ = false;
  std::thread writer_;  // last: it starts once everything above is built
};

grpc::ServerGenericBidiReactor* Service::CreateReactor(grpc::GenericCallbackServerContext* context) {
  std::shared_ptr<Call> call = front_->Open(context->method());
  call->Begin(call, context->method());
  return call.get();
}

void Call::Begin(std::shared_ptr<Call> self, const std::string& method) {
  self_ = std::move(self);
  if (front_->Stopping()) {
    End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
    return;
  }
  front_->Push(id_, kStart, method);
  StartRead(&read_buffer_);
}

void Call::OnReadDone(bool ok) {
  if (!ok) {  // the client has sent all it will; an ordered call says so once every request is answered
    bool tell = true;
    if (ordered_) {
      std::lock_guard<std::mutex> lock(order_mu_);
      half_closed_ = true;
      tell = open_.empty();
    }
    if (tell) front_->Push(id_, kHalfClose, std::string());
    return;
  }
  std::vector<grpc::Slice> slices;
  read_buffer_.Dump(&slices);
  std::string bytes;
  bytes.reserve(read_buffer_.Length());
  for (const auto& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  if (ordered_) {
    Take(std::move(bytes));
  } else {
    front_->Push(id_, kMessage, std::move(bytes));
  }
  bool more;
  {
    std::lock_guard<std::mutex> lock(mu_);
    more = ++unanswered_ < kMaxUnanswered;
    paused_ = !more;
  }
  if (more) StartRead(&read_buffer_);
}

// A ModelStreamInfer request: ticketed, and handed to Python unless an earlier request of its sequence is unanswered.
void Call::Take(std::string bytes) {
  Ticket ticket;
  wire::Step step;
  ticket.plain = wire::ReadRequest(bytes, &ticket.sequence_key, &step) && front_->plain();
  int route = ticket.plain ? front_->Route(step) : -1;
  ticket.plain = route >= 0;
  if (ticket.plain) {
    StepRecord& record = ticket.record;
    std::memset(&record, 0, sizeof record);
    std::memcpy(record.tokens, step.token, sizeof step.token);
    record.route = route;
    record.steps = step.tokens;
    record.start = step.start;
    record.end = step.end;
    record.call = id_;
    ticket.sequence = std::move(step.sequence);
    ticket.model_name = std::string(step.model_name);
    ticket.model_version = std::string(step.model_version);
    ticket.id = std::string(step.id);
    ticket.raw = step.raw;
  }
  ticket.message = std::move(bytes);  // after `step`'s views into it are copied
  Dispatch dispatch;
  {
    std::lock_guard<std::mutex> lock(order_mu_);
    uint64_t number = next_ticket_++;
    ticket.record.ticket = number;
    bool held = false;
    if (!ticket.sequence_key.empty()) {
      auto [waiting, first] = waiting_.try_emplace(ticket.sequence_key);
      if (!first) waiting->second.push_back(number), held = true;
    }
    open_.emplace(number, std::move(ticket));
    if (!held) DispatchLocked(number, &dispatch);
  }
  Hand(&dispatch);
}

void Call::DispatchLocked(uint64_t number, Dispatch* dispatch) {
  Ticket& ticket = open_.at(number);
  dispatch->ticket = number;
  dispatch->plain = ticket.plain;
  if (ticket.plain) {
    dispatch->record = ticket.record;
    dispatch->sequence = ticket.sequence;
  } else {
    dispatch->message = std::move(ticket.message);
  }
}

void Call::Hand(Dispatch* dispatch) {
  if (dispatch->ticket == 0) return;
  if (dispatch->plain) {
    front_->PushStep(dispatch->record, std::move(dispatch->sequence));
  } else {
    front_->Push(id_, kMessage, std::move(dispatch->message), dispatch->ticket);
  }
}

void Call::Close(const uint64_t* tickets, int count, std::vector<std::pair<int, Ticket>>* taken) {
  std::vector<Dispatch> next;
  bool drained;
  {
    std::lock_guard<std::mutex> lock(order_mu_);
    for (int i = 0; i < count; ++i) {
      auto found = open_.find(tickets[i]);
      if (found == open_.end()) continue;
      taken->emplace_back(i, std::move(found->second));
      open_.erase(found);
      const std::string& key = taken->back().second.sequence_key;
      auto waiting = key.empty() ? waiting_.end() : waiting_.find(key);
      if (waiting != waiting_.end() && waiting->second.empty()) {
        waiting_.erase(waiting);
      } else if (waiting != waiting_.end()) {
        next.emplace_back();
        DispatchLocked(waiting->second.front(), &next.back());
        waiting->second.pop_front();
      }
    }
    drained = half_closed_ && open_.empty() && !taken->empty();
  }
  for (auto& dispatch : next) Hand(&dispatch);
  if (drained) front_->Push(id_, kHalfClose, std::string());
}

void Call::Defer(uint64_t number) {
  std::string message;
  {
    std::lock_guard<std::mutex> lock(order_mu_);
    auto found = open_.find(number);
    if (found == open_.end() || !found->second.plain) return;
    found->second.plain = false;
    message = std::move(found->second.message);
  }
  front_->Push(id_, kMessage, std::move(message), number);
}

void Call::Write(std::string* responses, size_t count) {
  bool start, resume;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finishing_) return;
    for (size_t i = 0; i < count; ++i) pending_.push_back(std::move(responses[i]));
    unanswered_ = unanswered_ > static_cast<int>(count) ? unanswered_ - static_cast<int>(count) : 0;
    resume = paused_ && unanswered_ < kMaxUnanswered;
    if (resume) paused_ = false;
    start = !writing_;
    if (start) {
      writing_ = true;
      NextWriteLocked();
    }
  }
  if (start) StartWrite(&write_buffer_);
  if (resume) StartRead(&read_buffer_);
}

void Call::OnWriteDone(bool ok) {
  bool finish = false;
  grpc::Status status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok) pending_.clear();  // the call is broken: its cancellation follows
    if (!pending_.empty()) {
      NextWriteLocked();
    } else {
      writing_ = false;
      if (!finishing_ || finished_) return;
      finished_ = finish = true;
      status = status_;
    }
  }
  if (finish) {
    grpc::ServerGenericBidiReactor::Finish(status);
  } else {
    StartWrite(&write_buffer_);
  }
}

void Call::End(const grpc::Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finishing_) return;
    finishing_ = true;
    status_ = status;
    if (writing_) return;  // OnWriteDone finishes once the last write is out
    finished_ = true;
  }
  grpc::ServerGenericBidiReactor::Finish(status);
}

void Call::OnCancel() { front_->Push(id_, kCancel, std::string()); }

void Call::OnDone() {
  front_->Forget(id_);
  self_.reset();  // may delete this
}

// A plain step's answer, in the form its route's model gives: row `row` of each output [rows, steps, width].
std::string StepAnswer(const RouteAnswer& route, const Ticket& ticket, int64_t position, const float* const* outputs, int row, int steps) {
  wire::Output parts[8];
  int count = static_cast<int>(route.outputs.size());
  for (int k = 0; k < count; ++k) {
    size_t row_floats = static_cast<size_t>(steps) * route.widths[k];
    parts[k] = wire::Output{route.outputs[k], outputs[k] + row * row_floats, route.widths[k]};
  }
  return wire::Answer(route.model_name, route.model_version, ticket.id, position, parts, count, steps, ticket.raw);
}

}  // namespace

extern "C" {

// A front end listening on `address` with gRPC's channel arguments `names` = `values` (the limits --port has);
// its port (the one picked, for port 0) in *port. On failure, null and the reason in `error`.
void* rf_start(const char* address, const char** names, const int* values, int count, int* port, char* error, size_t error_size) {
  auto* front = new Front();
  std::string why;
  *port = front->Start(address, names, values, count, &why);
  if (*port < 0) {
    snprintf(error, error_size, "%s", why.c_str());
    delete front;
    return nullptr;
  }
  return front;
}

int rf_event_fd(void* front) { return static_cast<Front*>(front)->event_fd(); }

int rf_next(void* front, EventView* views, int max, StepRecord* steps, int max_steps, char* arena, size_t arena_size,
            int* step_count, size_t* arena_used) {
  return static_cast<Front*>(front)->Next(views, max, steps, max_steps, arena, arena_size, step_count, arena_used);
}

// A response of a call of another method than ModelStreamInfer.
void rf_write(void* front, uint64_t call, const char* data, size_t size) {
  static_cast<Front*>(front)->Queue(Outgoing{call, false, 0, std::string(data, size)});
}

void rf_finish(void* front, uint64_t call, int code, const char* message) {
  static_cast<Front*>(front)->Queue(Outgoing{call, true, code, message});
}

// Whether plain steps are read here at all (not with a state store, whose sessions the servicer confirms per request).
void rf_plain(void* front, int on) { static_cast<Front*>(front)->set_plain(on != 0); }

// An engine's call of steps begins (on), or its results are back (off; then whether steps wait to be taken).
int rf_hold(void* front, int on) { return static_cast<Front*>(front)->Hold(on != 0) ? 1 : 0; }

// ModelStreamInfer's answer to the request with this ticket.
void rf_answer(void* front, uint64_t call, uint64_t ticket, const char* data, size_t size) {
  auto* f = static_cast<Front*>(front);
  std::shared_ptr<Call> found = f->Find(call);
  std::vector<std::pair<int, Ticket>> taken;
  if (found) found->Close(&ticket, 1, &taken);
  if (!taken.empty()) f->Queue(Outgoing{call, false, 0, std::string(data, size)});
}

// A plain step refused: the error's answer, with the request's model, version and id as it sent them.
void rf_answer_error(void* front, uint64_t call, uint64_t ticket, const char* message) {
  auto* f = static_cast<Front*>(front);
  std::shared_ptr<Call> found = f->Find(call);
  std::vector<std::pair<int, Ticket>> taken;
  if (found) found->Close(&ticket, 1, &taken);
  for (auto& [_, request] : taken) {
    f->Queue(Outgoing{call, false, 0, wire::Error(message, request.model_name, request.model_version, request.id)});
  }
}

// A plain step that the Python servicer answers as a message (its bytes come back as a kMessage with its ticket).
void rf_defer(void* front, uint64_t call, uint64_t ticket) {
  std::shared_ptr<Call> found = static_cast<Front*>(front)->Find(call);
  if (found) found->Defer(ticket);
}

// The route's text: model name, 0, version, 0, and "=output" where one output was asked for. Its length (-1: none).
int rf_route(void* front, int route, char* text, size_t size) {
  std::string found = static_cast<Front*>(front)->RouteText(route);
  if (found.empty() || found.size() > size) return -1;
  std::memcpy(text, found.data(), found.size());
  return static_cast<int>(found.size());
}

// How the route's answers are written: the model's name and version, and the outputs (at most 8) with their widths.
void rf_route_answers(void* front, int route, const char* model_name, const char* model_version, int count, const char** outputs,
                      const int* widths) {
  RouteAnswer answer{model_name, model_version, {}, {}};
  for (int k = 0; k < count && k < 8; ++k) answer.outputs.emplace_back(outputs[k]), answer.widths.push_back(widths[k]);
  static_cast<Front*>(front)->SetAnswer(route, std::move(answer));
}

// The answers of `rows` plain steps of one route and `steps` steps each: row i answers (calls[i], tickets[i]) with
// the sequence's position[i] and row i of each of the route's outputs, outputs[k] being [rows, steps, width k] float32.
void rf_answer_steps(void* front, int route, int rows, const uint64_t* calls, const uint64_t* tickets, const int64_t* positions,
                     int steps, const float* const* outputs) {
  auto* f = static_cast<Front*>(front);
  RouteAnswer answer = f->GetAnswer(route);
  std::vector<int> order(rows);  // the rows call by call: each call's lock is taken once
  for (int i = 0; i < rows; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [calls](int a, int b) { return calls[a] < calls[b]; });
  std::vector<uint64_t> call_tickets;
  std::vector<std::pair<int, Ticket>> taken;
  std::vector<Outgoing> batch;
  batch.reserve(rows);
  for (int first = 0, last; first < rows; first = last) {
    uint64_t call = calls[order[first]];
    call_tickets.clear();
    for (last = first; last < rows && calls[order[last]] == call; ++last) call_tickets.push_back(tickets[order[last]]);
    std::shared_ptr<Call> found = f->Find(call);
    if (!found) continue;  // the call has ended
    taken.clear();
    found->Close(call_tickets.data(), static_cast<int>(call_tickets.size()), &taken);
    for (auto& [index, request] : taken) {
      int row = order[first + index];
      batch.push_back(Outgoing{call, false, 0, StepAnswer(answer, request, positions[row], outputs, row, steps)});
    }
  }
  f->QueueAll(&batch);
}

// The request parser alone (for tests): whether `data` is a plain step; its order key (model name, 0, sequence id;
// empty for none) in `key`, and what a plain step's answer needs in `fields`: model name, version, id, the output asked
// for ("" for all; "=name" for one) and "raw" or "contents", each ended by a 0 byte. The lengths in *key_size and
// *fields_size (buffers too small: both 0).
int rf_read_request(const char* data, size_t size, StepRecord* record, char* key, size_t* key_size, char* fields, size_t* fields_size) {
  std::string order_key;
  wire::Step step;
  bool plain = wire::ReadRequest(std::string_view(data, size), &order_key, &step);
  std::string text;
  for (std::string_view part : {step.model_name, step.model_version, step.id}) text.append(part.data(), part.size()).push_back('\0');
  if (step.outputs_named) text.append("=").append(step.output.data(), step.output.size());
  text.push_back('\0');
  text.append(step.raw ? "raw" : "contents").push_back('\0');
  bool fit = order_key.size() <= *key_size && text.size() <= *fields_size;
  *key_size = fit ? order_key.size() : 0;
  *fields_size = fit ? text.size() : 0;
  if (fit) {
    std::memcpy(key, order_key.data(), order_key.size());
    std::memcpy(fields, text.data(), text.size());
  }
  std::memset(record, 0, sizeof *record);
  std::memcpy(record->tokens, step.token, sizeof step.token);
  record->steps = step.tokens;
  record->start = step.start;
  record->end = step.end;
  return plain ? 1 : 0;
}

void rf_stop(void* front, const char* message) {
  auto* f = static_cast<Front*>(front);
  f->Stop(message);
  delete f;
}

}  // extern "C"
