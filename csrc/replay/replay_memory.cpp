// The recorded meta-gradient's intermediates are freed after their last use and a same-sized one
// is allocated a few operators later; glibc returns large blocks to the kernel (munmap, heap
// trimming), so each fresh one page-faults in anew (~40k minor faults, a fifth of a conv4
// meta-iteration). Inside a replay scope this allocator keeps freed blocks of at least
// kMinBytes, by exact size, and hands them out again; every other request, and every request
// outside a scope, goes to the allocator it replaced. The outermost leave() frees what is kept.
#include "replay/replay_memory.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <mutex>
#include <unordered_map>
#include <vector>

namespace maml_ext::replay {
namespace {

constexpr size_t kMinBytes = size_t{1} << 16;  // below this glibc's own free lists serve well (its mmap threshold starts at 128 KiB)
constexpr uint8_t kPriority = 100;              // above the default CPU allocator's 0

class ReplayAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    if (bytes >= kMinBytes) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (depth_ > 0) {
        void* ptr = nullptr;
        auto kept = kept_.find(bytes);
        if (kept != kept_.end() && !kept->second.empty()) {
          ptr = kept->second.back();
          kept->second.pop_back();
          ++reused_;
        } else {
          ptr = c10::alloc_cpu(bytes);
          ++fresh_;
        }
        sizes_.emplace(ptr, bytes);
        return {ptr, ptr, &ReplayAllocator::release, c10::Device(c10::DeviceType::CPU)};
      }
    }
    return base_->allocate(bytes);
  }

  // raw_allocate()'s blocks come from allocate(): ours, or the base allocator's (freed with its
  // own raw deleter).
  c10::DeleterFnPtr raw_deleter() const override { return &ReplayAllocator::release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  bool enter() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (base_ == nullptr) {
      base_ = c10::GetCPUAllocator();
      c10::SetCPUAllocator(this, kPriority);
    }
    ++depth_;
    return c10::GetCPUAllocator() == this;
  }

  void leave() {
    std::lock_guard<std::mutex> lock(mutex_);
    TORCH_CHECK(depth_ > 0, "maml_ext: replay memory scope left more often than entered");
    if (--depth_ == 0) {
      for (auto& [bytes, blocks] : kept_) {
        for (void* ptr : blocks) c10::free_cpu(ptr);
      }
      kept_.clear();
    }
  }

  std::pair<int64_t, int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {reused_, fresh_};
  }

  static ReplayAllocator& instance() {
    static auto* allocator = new ReplayAllocator();  // never destroyed: tensors outlive statics
    return *allocator;
  }

 private:
  static void release(void* ptr) {
    ReplayAllocator& self = instance();
    c10::DeleterFnPtr other = nullptr;
    {
      std::lock_guard<std::mutex> lock(self.mutex_);
      auto found = self.sizes_.find(ptr);
      if (found == self.sizes_.end()) {
        other = self.base_->raw_deleter();  // a raw block of the base allocator
      } else {
        size_t bytes = found->second;
        self.sizes_.erase(found);
        if (self.depth_ > 0) {
          self.kept_[bytes].push_back(ptr);
          return;
        }
      }
    }
    if (other != nullptr) {
      other(ptr);
    } else {
      c10::free_cpu(ptr);
    }
  }

  std::mutex mutex_;
  c10::Allocator* base_ = nullptr;
  int depth_ = 0;
  std::unordered_map<size_t, std::vector<void*>> kept_;  // freed inside a scope, by size
  std::unordered_map<void*, size_t> sizes_;              // handed out by this allocator
  int64_t reused_ = 0;
  int64_t fresh_ = 0;
};

}  // namespace

bool enter() { return ReplayAllocator::instance().enter(); }
void leave() { ReplayAllocator::instance().leave(); }
std::pair<int64_t, int64_t> stats() { return ReplayAllocator::instance().stats(); }

}  // namespace maml_ext::replay
