// serve_app's request path into in-process Triton, with no Python on Triton's threads.
//
// tritonserver's bindings call back into Python for every output allocation, response and
// request release: each a GIL acquisition on one of Triton's threads, which waits for the
// event loop (measured: ~0.2 ms per response under load on 2 cores, while the batch's next
// step waits). Here those callbacks are C: outputs go to malloc'd buffers, and responses and
// releases are queued under a mutex; the first event into an empty queue writes an eventfd
// that the event loop watches. `drain()`, on the loop's thread, turns the queued events into
// Python objects: a response's outputs become numpy arrays that own their buffers (no copy);
// a BYTES output (Triton's 4-byte little-endian length before each element) becomes an object
// array of `bytes`.
//
// Compiled by `python -m serve_app.triton_install install` against the installed core.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "triton/core/tritonserver.h"

namespace py = pybind11;

namespace {

// A Triton error on the way to Python, raised as tritonserver's exception for its code.
struct TritonFailure {
  TRITONSERVER_Error_Code code;
  std::string message;
};

void Check(TRITONSERVER_Error* error)
{
  if (error == nullptr) {
    return;
  }
  TritonFailure failure{
      TRITONSERVER_ErrorCode(error), TRITONSERVER_ErrorMessage(error)};
  TRITONSERVER_ErrorDelete(error);
  throw failure;
}

// tritonserver._c's exception classes by error code (the module keeps them alive).
PyObject* error_classes[TRITONSERVER_ERROR_CANCELLED + 1] = {};

py::object ErrorObject(TRITONSERVER_Error_Code code, const std::string& message)
{
  PyObject* cls = (code >= 0 && code <= TRITONSERVER_ERROR_CANCELLED && error_classes[code])
                      ? error_classes[code]
                      : error_classes[TRITONSERVER_ERROR_UNKNOWN];
  return py::reinterpret_borrow<py::object>(cls)(message);
}

// numpy dtype strings by Triton datatype; "" for BYTES (an object array, built apart) and for
// BF16, which numpy cannot hold.
const char* NumpyFormat(TRITONSERVER_DataType datatype)
{
  switch (datatype) {
    case TRITONSERVER_TYPE_BOOL: return "?";
    case TRITONSERVER_TYPE_UINT8: return "u1";
    case TRITONSERVER_TYPE_UINT16: return "u2";
    case TRITONSERVER_TYPE_UINT32: return "u4";
    case TRITONSERVER_TYPE_UINT64: return "u8";
    case TRITONSERVER_TYPE_INT8: return "i1";
    case TRITONSERVER_TYPE_INT16: return "i2";
    case TRITONSERVER_TYPE_INT32: return "i4";
    case TRITONSERVER_TYPE_INT64: return "i8";
    case TRITONSERVER_TYPE_FP16: return "f2";
    case TRITONSERVER_TYPE_FP32: return "f4";
    case TRITONSERVER_TYPE_FP64: return "f8";
    default: return "";
  }
}

// An output buffer; `adopted` once a numpy array owns it (the response's release then keeps it).
struct Block {
  void* data;
  bool adopted;
};

TRITONSERVER_Error* Allocate(
    TRITONSERVER_ResponseAllocator*, const char*, size_t byte_size,
    TRITONSERVER_MemoryType, int64_t, void*, void** buffer, void** buffer_userp,
    TRITONSERVER_MemoryType* actual_memory_type, int64_t* actual_memory_type_id)
{
  void* data = std::malloc(byte_size > 0 ? byte_size : 1);
  if (data == nullptr) {
    return TRITONSERVER_ErrorNew(
        TRITONSERVER_ERROR_INTERNAL, "no host memory left for an output");
  }
  *buffer = data;
  *buffer_userp = new Block{data, false};
  *actual_memory_type = TRITONSERVER_MEMORY_CPU;
  *actual_memory_type_id = 0;
  return nullptr;
}

TRITONSERVER_Error* Release(
    TRITONSERVER_ResponseAllocator*, void*, void* buffer_userp, size_t,
    TRITONSERVER_MemoryType, int64_t)
{
  auto* block = static_cast<Block*>(buffer_userp);
  if (!block->adopted) {
    std::free(block->data);
  }
  delete block;
  return nullptr;
}

// What Triton's threads hand to the event loop: a response (or nullptr with flags only),
// or the release of a request (Triton reads its inputs until then).
struct Event {
  uint64_t token;
  TRITONSERVER_InferenceResponse* response;
  bool released;
};

// Shared by the Python object and every request in flight, so that neither the allocator nor
// the queue goes away while Triton may still call back.
class Queue {
 public:
  Queue() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC))
  {
    if (fd_ < 0) {
      throw std::system_error(errno, std::generic_category(), "eventfd");
    }
    TRITONSERVER_Error* error =
        TRITONSERVER_ResponseAllocatorNew(&allocator_, Allocate, Release, nullptr);
    if (error != nullptr) {
      close(fd_);
      Check(error);
    }
  }
  ~Queue()
  {
    for (auto& event : events_) {
      if (event.response != nullptr) {
        TRITONSERVER_InferenceResponseDelete(event.response);
      }
    }
    TRITONSERVER_ResponseAllocatorDelete(allocator_);
    close(fd_);
  }
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;

  int fd() const { return fd_; }
  TRITONSERVER_ResponseAllocator* allocator() const { return allocator_; }

  void Push(Event event)
  {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      wake = events_.empty();
      events_.push_back(event);
    }
    if (wake) {
      const uint64_t one = 1;
      // A full counter (never, at 2^64 - 1) or EAGAIN still leaves the fd readable.
      (void)!write(fd_, &one, sizeof(one));
    }
  }

  std::vector<Event> Take()
  {
    std::vector<Event> taken;
    std::lock_guard<std::mutex> lock(mutex_);
    taken.swap(events_);
    uint64_t count;
    // Reset under the lock: an event pushed after this wakes the loop again.
    (void)!read(fd_, &count, sizeof(count));
    return taken;
  }

  // Requests in flight, for cancel(): entered at submit, left at release.
  void Enter(uint64_t token, TRITONSERVER_InferenceRequest* request)
  {
    std::lock_guard<std::recursive_mutex> lock(requests_mutex_);
    requests_[token] = request;
  }
  void Leave(uint64_t token)
  {
    std::lock_guard<std::recursive_mutex> lock(requests_mutex_);
    requests_.erase(token);
  }
  void Cancel(uint64_t token)
  {
    std::lock_guard<std::recursive_mutex> lock(requests_mutex_);
    auto found = requests_.find(token);
    if (found != requests_.end()) {
      TRITONSERVER_Error* error = TRITONSERVER_InferenceRequestCancel(found->second);
      if (error != nullptr) {
        TRITONSERVER_ErrorDelete(error);  // already finishing: nothing to cancel
      }
    }
  }

 private:
  int fd_;
  TRITONSERVER_ResponseAllocator* allocator_ = nullptr;
  std::mutex mutex_;
  std::vector<Event> events_;
  std::recursive_mutex requests_mutex_;  // Triton may release a request inside Cancel
  std::unordered_map<uint64_t, TRITONSERVER_InferenceRequest*> requests_;
};

struct CallContext {
  std::shared_ptr<Queue> queue;
  uint64_t token;
};

void RequestReleased(TRITONSERVER_InferenceRequest* request, const uint32_t flags, void* userp)
{
  if ((flags & TRITONSERVER_REQUEST_RELEASE_ALL) == 0) {
    return;  // rescheduled (sequence batching): Triton keeps using it
  }
  auto* context = static_cast<CallContext*>(userp);
  context->queue->Leave(context->token);
  TRITONSERVER_InferenceRequestDelete(request);
  context->queue->Push(Event{context->token, nullptr, true});
  delete context;
}

void ResponseComplete(TRITONSERVER_InferenceResponse* response, const uint32_t flags, void* userp)
{
  auto* context = static_cast<CallContext*>(userp);
  if (response != nullptr) {
    context->queue->Push(Event{context->token, response, false});
  }
  if (flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL) {
    delete context;
  }
}

class Requests {
 public:
  explicit Requests(uintptr_t server)
      : server_(reinterpret_cast<TRITONSERVER_Server*>(server)), queue_(std::make_shared<Queue>())
  {
  }

  int fd() const { return queue_->fd(); }

  // Submit one request. `inputs`: name → C-contiguous numpy array, or for BYTES (the serialized
  // elements as a uint8 array, the tensor's shape); `types`: name → Triton datatype; `options`:
  // None or (priority, timeout_us, correlation id (int or str), flags,
  // [(key, bool | int | float | str)]). The arrays must stay alive until `token` is released.
  void Submit(
      uint64_t token, const std::string& model, int64_t version, const py::dict& inputs,
      const py::dict& types, const py::object& options)
  {
    TRITONSERVER_InferenceRequest* request = nullptr;
    Check(TRITONSERVER_InferenceRequestNew(&request, server_, model.c_str(), version));
    auto released = std::make_unique<CallContext>(CallContext{queue_, token});
    auto responded = std::make_unique<CallContext>(CallContext{queue_, token});
    try {
      for (const auto& item : inputs) {
        py::handle value = item.second;
        std::vector<int64_t> shape;
        if (py::isinstance<py::tuple>(value)) {  // BYTES: (serialized elements, shape)
          auto pair = py::reinterpret_borrow<py::tuple>(value);
          value = pair[0];
          for (const auto& dim : py::reinterpret_borrow<py::tuple>(pair[1])) {
            shape.push_back(py::cast<int64_t>(dim));
          }
        }
        if (!py::isinstance<py::array>(value)) {
          throw py::type_error("inputs must be numpy arrays");
        }
        const std::string name = py::cast<std::string>(item.first);
        auto array = py::reinterpret_borrow<py::array>(value);
        const auto datatype =
            static_cast<TRITONSERVER_DataType>(py::cast<int>(types[item.first]));
        if (!py::isinstance<py::tuple>(item.second)) {
          shape.assign(array.shape(), array.shape() + array.ndim());
        }
        Check(TRITONSERVER_InferenceRequestAddInput(
            request, name.c_str(), datatype, shape.data(), shape.size()));
        Check(TRITONSERVER_InferenceRequestAppendInputData(
            request, name.c_str(), array.data(), array.nbytes(), TRITONSERVER_MEMORY_CPU, 0));
      }
      if (!options.is_none()) {
        Apply(request, py::reinterpret_borrow<py::tuple>(options));
      }
      Check(TRITONSERVER_InferenceRequestSetReleaseCallback(
          request, RequestReleased, released.get()));
      Check(TRITONSERVER_InferenceRequestSetResponseCallback(
          request, queue_->allocator(), nullptr, ResponseComplete, responded.get()));
    }
    catch (...) {
      TRITONSERVER_InferenceRequestDelete(request);
      throw;
    }
    queue_->Enter(token, request);  // before Triton can release it
    TRITONSERVER_Error* error = TRITONSERVER_ServerInferAsync(server_, request, nullptr);
    if (error != nullptr) {  // not taken: Triton calls neither callback
      queue_->Leave(token);
      TRITONSERVER_InferenceRequestDelete(request);
      Check(error);
    }
    released.release();  // the callbacks own them now
    responded.release();
  }

  void Cancel(uint64_t token) { queue_->Cancel(token); }

  // Everything Triton finished since the last call, as (token, payload): payload is None for a
  // released request, a dict name → array for a response, or the exception an error response
  // raises.
  py::list Drain()
  {
    py::list done;
    for (const Event& event : queue_->Take()) {
      if (event.released) {
        done.append(py::make_tuple(event.token, py::none()));
      } else {
        py::object outcome;
        try {
          outcome = Outputs(event.response);
        }
        catch (const std::exception& failure) {  // never lose the other events taken with it
          outcome = ErrorObject(TRITONSERVER_ERROR_INTERNAL, failure.what());
        }
        done.append(py::make_tuple(event.token, outcome));
        TRITONSERVER_InferenceResponseDelete(event.response);
      }
    }
    return done;
  }

 private:
  static void Apply(TRITONSERVER_InferenceRequest* request, const py::tuple& options)
  {
    Check(TRITONSERVER_InferenceRequestSetPriorityUInt64(request, py::cast<uint64_t>(options[0])));
    Check(TRITONSERVER_InferenceRequestSetTimeoutMicroseconds(
        request, py::cast<uint64_t>(options[1])));
    const py::object correlation_id = options[2];
    if (py::isinstance<py::str>(correlation_id)) {
      Check(TRITONSERVER_InferenceRequestSetCorrelationIdString(
          request, py::cast<std::string>(correlation_id).c_str()));
    } else if (py::cast<uint64_t>(correlation_id) != 0) {
      Check(TRITONSERVER_InferenceRequestSetCorrelationId(
          request, py::cast<uint64_t>(correlation_id)));
    }
    Check(TRITONSERVER_InferenceRequestSetFlags(request, py::cast<uint32_t>(options[3])));
    for (const auto& entry : py::reinterpret_borrow<py::list>(options[4])) {
      const auto pair = py::reinterpret_borrow<py::tuple>(entry);
      const std::string key = py::cast<std::string>(pair[0]);
      const py::object value = pair[1];
      if (py::isinstance<py::bool_>(value)) {
        Check(TRITONSERVER_InferenceRequestSetBoolParameter(
            request, key.c_str(), py::cast<bool>(value)));
      } else if (py::isinstance<py::int_>(value)) {
        Check(TRITONSERVER_InferenceRequestSetIntParameter(
            request, key.c_str(), py::cast<int64_t>(value)));
      } else if (py::isinstance<py::float_>(value)) {
        Check(TRITONSERVER_InferenceRequestSetDoubleParameter(
            request, key.c_str(), py::cast<double>(value)));
      } else {
        Check(TRITONSERVER_InferenceRequestSetStringParameter(
            request, key.c_str(), py::cast<std::string>(py::str(value)).c_str()));
      }
    }
  }

  static py::object Outputs(TRITONSERVER_InferenceResponse* response)
  {
    TRITONSERVER_Error* error = TRITONSERVER_InferenceResponseError(response);
    if (error != nullptr) {  // owned by the response
      return ErrorObject(TRITONSERVER_ErrorCode(error), TRITONSERVER_ErrorMessage(error));
    }
    uint32_t count = 0;
    if ((error = TRITONSERVER_InferenceResponseOutputCount(response, &count)) != nullptr) {
      return Failure(error);
    }
    py::dict outputs;
    for (uint32_t index = 0; index < count; ++index) {
      const char* name;
      TRITONSERVER_DataType datatype;
      const int64_t* shape;
      uint64_t dims;
      const void* base;
      size_t byte_size;
      TRITONSERVER_MemoryType memory_type;
      int64_t memory_type_id;
      void* userp;
      error = TRITONSERVER_InferenceResponseOutput(
          response, index, &name, &datatype, &shape, &dims, &base, &byte_size, &memory_type,
          &memory_type_id, &userp);
      if (error != nullptr) {
        return Failure(error);
      }
      std::vector<py::ssize_t> extent(shape, shape + dims);
      if (datatype == TRITONSERVER_TYPE_BYTES && userp != nullptr) {
        py::object strings = BytesArray(name, static_cast<const char*>(base), byte_size, extent);
        if (!py::isinstance<py::array>(strings)) {
          return strings;  // the error
        }
        outputs[py::str(name)] = strings;
        continue;
      }
      const std::string format = NumpyFormat(datatype);
      if (format.empty() || userp == nullptr) {
        return ErrorObject(
            TRITONSERVER_ERROR_INTERNAL,
            std::string("output '") + name + "' has a datatype this server cannot return");
      }
      py::dtype dtype(format);
      py::ssize_t elements = 1;
      for (py::ssize_t size : extent) {
        elements *= size;
      }
      if (static_cast<size_t>(elements * dtype.itemsize()) != byte_size) {
        return ErrorObject(
            TRITONSERVER_ERROR_INTERNAL,
            std::string("output '") + name + "' holds " + std::to_string(byte_size) +
                " bytes, not what its shape and datatype need");
      }
      auto* block = static_cast<Block*>(userp);
      py::capsule owner(block->data, [](void* data) { std::free(data); });
      block->adopted = true;
      outputs[py::str(name)] = py::array(dtype, extent, block->data, owner);
    }
    return std::move(outputs);
  }

  // A BYTES output as an object array of `bytes` in its shape, or the error it is when its
  // elements do not fill the shape exactly (a fault of the backend that made it).
  static py::object BytesArray(
      const char* name, const char* data, size_t byte_size, const std::vector<py::ssize_t>& extent)
  {
    size_t elements = 1;
    for (py::ssize_t size : extent) {
      elements *= static_cast<size_t>(size);
    }
    py::list values;
    size_t offset = 0;
    while (offset < byte_size) {
      uint32_t length;
      if (byte_size - offset < sizeof(length) || values.size() == elements) {
        break;
      }
      std::memcpy(&length, data + offset, sizeof(length));  // little-endian, as Triton writes it
      offset += sizeof(length);
      if (length > byte_size - offset) {
        break;
      }
      values.append(py::bytes(data + offset, length));
      offset += length;
    }
    if (offset != byte_size || values.size() != elements) {
      return ErrorObject(
          TRITONSERVER_ERROR_INTERNAL,
          std::string("output '") + name + "' does not hold the " + std::to_string(elements) +
              " string elements of its shape");
    }
    py::array array(py::dtype("O"), std::vector<py::ssize_t>{static_cast<py::ssize_t>(elements)});
    array.attr("__setitem__")(py::slice(0, static_cast<py::ssize_t>(elements), 1), values);
    py::tuple shape(extent.size());
    for (size_t i = 0; i < extent.size(); ++i) {
      shape[i] = py::int_(extent[i]);
    }
    return array.attr("reshape")(shape);
  }

  static py::object Failure(TRITONSERVER_Error* error)
  {
    py::object exception = ErrorObject(TRITONSERVER_ErrorCode(error), TRITONSERVER_ErrorMessage(error));
    TRITONSERVER_ErrorDelete(error);
    return exception;
  }

  TRITONSERVER_Server* server_;
  std::shared_ptr<Queue> queue_;
};

}  // namespace

PYBIND11_MODULE(serve_app_triton_requests, m)
{
  m.doc() = "serve_app's request path into in-process Triton (C callbacks, one eventfd)";
  py::module_ bindings = py::module_::import("tritonserver._c");
  m.attr("_bindings") = bindings;  // keeps the exception classes below alive
  const std::pair<TRITONSERVER_Error_Code, const char*> names[] = {
      {TRITONSERVER_ERROR_UNKNOWN, "UnknownError"},
      {TRITONSERVER_ERROR_INTERNAL, "InternalError"},
      {TRITONSERVER_ERROR_NOT_FOUND, "NotFoundError"},
      {TRITONSERVER_ERROR_INVALID_ARG, "InvalidArgumentError"},
      {TRITONSERVER_ERROR_UNAVAILABLE, "UnavailableError"},
      {TRITONSERVER_ERROR_UNSUPPORTED, "UnsupportedError"},
      {TRITONSERVER_ERROR_ALREADY_EXISTS, "AlreadyExistsError"},
      {TRITONSERVER_ERROR_CANCELLED, "UnavailableError"},  // the bindings have no CancelledError
  };
  for (const auto& [code, name] : names) {
    error_classes[code] = bindings.attr(name).ptr();
  }
  py::register_exception_translator([](std::exception_ptr pointer) {
    try {
      if (pointer) {
        std::rethrow_exception(pointer);
      }
    }
    catch (const TritonFailure& failure) {
      py::object exception = ErrorObject(failure.code, failure.message);
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exception.ptr())), exception.ptr());
    }
  });
  py::class_<Requests>(m, "Requests")
      .def(py::init<uintptr_t>(), py::arg("server"))
      .def_property_readonly("fd", &Requests::fd)
      .def("submit", &Requests::Submit)
      .def("cancel", &Requests::Cancel)
      .def("drain", &Requests::Drain);
}
