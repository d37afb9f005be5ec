// rnnserve's native front end: gRPC's C++ server carrying the KServe service's messages, so the Python event
// loop no longer pays grpc.aio's own cost per message (an empty echo: 110-290 us of CPU a request on 2 cores).
//
// It is transport only. Every call, of any method, becomes events for Python: the call's start (with its method),
// each message read (its bytes, unparsed), the client's half-close and its cancellation. Python answers with the
// response messages' bytes and the call's status. So every answer, every error and every sequence rule stays the
// Python servicer's, exactly as on --port. Events wait in one queue; an eventfd tells the event loop that the queue
// is not empty, and the loop takes everything waiting in one call (server/native_front/__init__.py).
//
// Threads: gRPC's callback threads run the reactors; the event loop thread calls rf_next, and queues its answers
// (rf_write, rf_finish) for a writer thread of ours, which hands them to gRPC. No lock is held while gRPC is
// called, since gRPC may run a reactor's callback inline, on the calling thread.
// A call lives in a shared_ptr held by the table of open calls and by itself until gRPC's OnDone, so a write for a
// call that has just ended is safely ignored.

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <sys/eventfd.h>
#include <unistd.h>

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

struct Event {
  uint64_t call;
  int32_t kind;
  std::string data;  // the method for kStart, the message for kMessage
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
};

class Front;

class Call : public grpc::ServerGenericBidiReactor {
 public:
  Call(Front* front, uint64_t id) : front_(front), id_(id) {}
  void Begin(std::shared_ptr<Call> self, const std::string& method);
  void Write(std::string bytes);
  void End(const grpc::Status& status);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  void NextWriteLocked() {
    grpc::Slice slice(pending_.front().data(), pending_.front().size());
    write_buffer_ = grpc::ByteBuffer(&slice, 1);
    pending_.pop_front();
  }

  Front* front_;
  const uint64_t id_;
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

  std::shared_ptr<Call> Open() {
    std::lock_guard<std::mutex> lock(calls_mu_);
    uint64_t id = next_id_++;
    auto call = std::make_shared<Call>(this, id);
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

  void Push(uint64_t call, Kind kind, std::string data) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(events_mu_);
      events_.push_back(Event{call, kind, std::move(data)});
      wake = !signalled_;
      signalled_ = true;
    }
    if (wake) {
      uint64_t one = 1;
      ssize_t written = write(event_fd_, &one, sizeof one);
      (void)written;
    }
  }

  // Up to `max` waiting events into `views`; the eventfd stays readable while more wait.
  int Next(EventView* views, int max) {
    std::lock_guard<std::mutex> lock(events_mu_);
    taken_.clear();
    while (!events_.empty() && static_cast<int>(taken_.size()) < max) {
      taken_.push_back(std::move(events_.front()));
      events_.pop_front();
    }
    if (events_.empty()) {
      uint64_t count;
      ssize_t read_ = read(event_fd_, &count, sizeof count);
      (void)read_;
      signalled_ = false;
    }
    for (size_t i = 0; i < taken_.size(); ++i) {
      views[i] = EventView{taken_[i].call, taken_[i].kind, 0, taken_[i].data.data(), taken_[i].data.size()};
    }
    return static_cast<int>(taken_.size());
  }

  int event_fd() const { return event_fd_; }

 private:
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
    std::deque<Outgoing> batch;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(outgoing_mu_);
        outgoing_ready_.wait(lock, [this] { return !outgoing_.empty() || writer_stopping_; });
        if (outgoing_.empty()) return;
        batch.swap(outgoing_);
      }
      for (auto& outgoing : batch) {
        std::shared_ptr<Call> call = Find(outgoing.call);
        if (!call) continue;  // ended meanwhile
        if (outgoing.finish) {
          call->End(grpc::Status(static_cast<grpc::StatusCode>(outgoing.code), outgoing.data));
        } else {
          call->Write(std::move(outgoing.data));
        }
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
  std::vector<Event> taken_;
  bool signalled_ = false;
  std::mutex outgoing_mu_;
  std::condition_variable outgoing_ready_;
  std::deque<Outgoing> outgoing_;
  bool writer_stopping_ = false;
  std::thread writer_;  // last: it starts once everything above is built
};

grpc::ServerGenericBidiReactor* Service::CreateReactor(grpc::GenericCallbackServerContext* context) {
  std::shared_ptr<Call> call = front_->Open();
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
  if (!ok) {  // the client has sent all it will
    front_->Push(id_, kHalfClose, std::string());
    return;
  }
  std::vector<grpc::Slice> slices;
  read_buffer_.Dump(&slices);
  std::string bytes;
  bytes.reserve(read_buffer_.Length());
  for (const auto& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  front_->Push(id_, kMessage, std::move(bytes));
  bool more;
  {
    std::lock_guard<std::mutex> lock(mu_);
    more = ++unanswered_ < kMaxUnanswered;
    paused_ = !more;
  }
  if (more) StartRead(&read_buffer_);
}

void Call::Write(std::string bytes) {
  bool start, resume;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finishing_) return;
    pending_.push_back(std::move(bytes));
    if (unanswered_ > 0) --unanswered_;
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

int rf_next(void* front, EventView* views, int max) { return static_cast<Front*>(front)->Next(views, max); }

void rf_write(void* front, uint64_t call, const char* data, size_t size) {
  static_cast<Front*>(front)->Queue(Outgoing{call, false, 0, std::string(data, size)});
}

void rf_finish(void* front, uint64_t call, int code, const char* message) {
  static_cast<Front*>(front)->Queue(Outgoing{call, true, code, message});
}

void rf_stop(void* front, const char* message) {
  auto* f = static_cast<Front*>(front);
  f->Stop(message);
  delete f;
}

}  // extern "C"
