#include "cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__linux__)
#include <sched.h>
#endif

namespace fusedce::cpu {
namespace {

class ThreadPool {
 public:
  explicit ThreadPool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
    const int64_t pieces_wanted = std::min<int64_t>(size() * 4, (n + grain - 1) / grain);
    if (pieces_wanted <= 1 || size() == 1) {
      body(0, n);
      return;
    }
    std::lock_guard<std::mutex> one_job_at_a_time(run_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &body;
      n_ = n;
      piece_ = (n + pieces_wanted - 1) / pieces_wanted;
      next_.store(0);
      busy_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    take_pieces();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return busy_ == 0; });
    body_ = nullptr;
  }

 private:
  void take_pieces() {
    for (;;) {
      const int64_t begin = next_.fetch_add(piece_);
      if (begin >= n_) return;
      (*body_)(begin, std::min(n_, begin + piece_));
    }
  }
  void work() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      take_pieces();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--busy_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_ = 0, piece_ = 1;
  std::atomic<int64_t> next_{0};
  int busy_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
};

// Created on first use and replaced by set_num_threads; a job in flight keeps its pool alive.
std::mutex pool_mutex;
std::shared_ptr<ThreadPool> pool;

std::shared_ptr<ThreadPool> the_pool() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  if (!pool) pool = std::make_shared<ThreadPool>(default_num_threads());
  return pool;
}

}  // namespace

void* thread_scratch(std::size_t bytes) {
  struct Scratch {
    void* data = nullptr;
    std::size_t size = 0;
    ~Scratch() { std::free(data); }
  };
  thread_local Scratch scratch;
  if (bytes > scratch.size) {
    std::free(scratch.data);
    const std::size_t size = (bytes + 63) / 64 * 64;
    scratch.data = std::aligned_alloc(64, size);
    scratch.size = scratch.data ? size : 0;
  }
  return scratch.data;
}

int default_num_threads() {
  if (const char* env = std::getenv("FUSEDCE_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

int num_threads() { return the_pool()->size(); }

void set_num_threads(int n) {
  auto fresh = std::make_shared<ThreadPool>(std::max(1, n));
  std::lock_guard<std::mutex> lock(pool_mutex);
  pool.swap(fresh);  // the old pool is joined when its last job lets go of it
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  the_pool()->run(n, std::max<int64_t>(1, grain), body);
}

}  // namespace fusedce::cpu
