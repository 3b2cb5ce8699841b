// The fiber scheduler of the execution model (see scheduler.h for what it promises).
#include "simt/scheduler.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIMT_ASAN 1
#endif
#endif
#if defined(SIMT_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;

namespace simt {

namespace {

// ---- settings ------------------------------------------------------------------------------

unsigned env_unsigned(const char* name, unsigned fallback) {
  const char* e = std::getenv(name);
  if (e == nullptr || *e == '\0') return fallback;
  return static_cast<unsigned>(std::strtoul(e, nullptr, 10));
}

unsigned& seed_setting() {
  static unsigned seed = env_unsigned("FUSEDCE_EMULATED_SHUFFLE", 0);
  return seed;
}

std::size_t stack_bytes() {
#if defined(SIMT_ASAN)
  constexpr unsigned kDefaultKiB = 256;  // instrumented frames are several times larger
#else
  constexpr unsigned kDefaultKiB = 64;
#endif
  static const std::size_t bytes = std::size_t{env_unsigned("FUSEDCE_EMULATED_STACK_KB", kDefaultKiB)} * 1024;
  return bytes;
}

// ---- state of a running cluster --------------------------------------------------------------

struct Wait {
  const unsigned long* generation = nullptr;  // runnable again once *generation != seen
  unsigned long seen = 0;
  const char* what = "";
  Site site{"", 0};
};

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;  // lowest usable address
  unsigned block = 0;     // index of its block in the cluster
  unsigned linear = 0;    // linear thread index in the block
  uint3 thread{0, 0, 0};
  bool done = false;
  bool waiting = false;
  Wait wait;
  void* fake_stack = nullptr;  // ASan's bookkeeping for this stack
};

struct Barrier {
  unsigned arrived = 0;
  unsigned long generation = 0;
  Site site{"", 0};
};

// One meeting point per (warp, mask). Deposits alternate between two slots by generation: a
// lane can only deposit for generation g + 2 after every lane of the mask has arrived at g + 1,
// hence has read what it needed from generation g.
struct WarpMeeting {
  unsigned mask = 0;
  unsigned arrived = 0;  // lanes arrived in this generation
  unsigned long generation = 0;
  const char* what = "";
  Site site{"", 0};
  alignas(16) unsigned char slot[2][kWarpSize][16];
};

struct SharedVar {
  const void* tag;
  std::size_t size, align;
  unsigned char* mem;
};

struct Block {
  uint3 index{0, 0, 0};
  uint3 in_cluster{0, 0, 0};
  unsigned alive = 0;
  Barrier barrier;
  std::vector<std::vector<std::unique_ptr<WarpMeeting>>> meetings;  // [warp] -> by mask
  std::vector<unsigned> exited;                                      // [warp] lanes that have exited
  std::vector<SharedVar> shared;
  unsigned char* dynamic = nullptr;
  std::size_t dynamic_size = 0;
};

void release_shared(Block& b) {
  for (auto& v : b.shared) ::operator delete[](v.mem, std::align_val_t(v.align));
  b.shared.clear();
  if (b.dynamic != nullptr) ::operator delete[](b.dynamic, std::align_val_t(16));
  b.dynamic = nullptr;
}

unsigned char* new_shared_bytes(std::size_t size, std::size_t align) {
  auto* p = static_cast<unsigned char*>(::operator new[](size, std::align_val_t(align)));
  std::memset(p, 0xCD, size);  // uninitialised shared memory is not zero on a GPU either
  return p;
}

// Fiber stacks, reused from launch to launch; each has a guard page below it.
class StackPool {
 public:
  ~StackPool() {
    if (base_ != nullptr) munmap(base_, mapped_);
  }
  char* stack(std::size_t i) const { return base_ + i * stride_ + page_; }
  void reserve(std::size_t count) {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t size = (stack_bytes() + page - 1) / page * page;
    if (count <= count_ && size + page == stride_) return;
    if (base_ != nullptr) munmap(base_, mapped_);
    page_ = page;
    stride_ = size + page;
    mapped_ = stride_ * count;
    void* m = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      base_ = nullptr;
      count_ = 0;
      throw std::bad_alloc();
    }
    base_ = static_cast<char*>(m);
    count_ = count;
    for (std::size_t i = 0; i < count; ++i) mprotect(base_ + i * stride_, page, PROT_NONE);
  }
  std::size_t size() const { return stride_ - page_; }

 private:
  char* base_ = nullptr;
  std::size_t mapped_ = 0, stride_ = 0, page_ = 0, count_ = 0;
};

struct Cluster {
  const char* kernel = "";
  GridShape shape;
  unsigned threads_per_block = 0;
  void (*body)(void*) = nullptr;
  void* arg = nullptr;
  std::vector<Fiber> fibers;
  std::vector<Block> blocks;
  unsigned alive = 0;
  Barrier barrier;
  int current = -1;
  ucontext_t main_context;
  bool failed = false;
  std::string failure;
  const void* main_stack = nullptr;  // ASan: the OS thread's own stack
  std::size_t main_stack_size = 0;
};

thread_local Cluster* running = nullptr;
thread_local StackPool stacks;

Fiber& me() { return running->fibers[static_cast<std::size_t>(running->current)]; }
Block& my_block() { return running->blocks[me().block]; }

std::string where(Site s) { return std::string(s.file) + ":" + std::to_string(s.line); }
bool same_site(Site a, Site b) {
  return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}
std::string xyz(uint3 v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}
std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}
std::string lanes_of(unsigned bits) {
  std::string s;
  for (int l = 0; l < kWarpSize; ++l)
    if ((bits >> l) & 1u) {
      int e = l;
      while (e + 1 < kWarpSize && ((bits >> (e + 1)) & 1u)) ++e;
      if (!s.empty()) s += ",";
      s += e == l ? std::to_string(l) : std::to_string(l) + "-" + std::to_string(e);
      l = e;
    }
  return s.empty() ? "none" : s;
}

// ---- switching ---------------------------------------------------------------------------------

void enter_fiber(Cluster& c, Fiber& f) {
#if defined(SIMT_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, stacks.size());
  swapcontext(&c.main_context, &f.context);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  swapcontext(&c.main_context, &f.context);
#endif
}

// Back to the scheduler; returns when the scheduler resumes this fiber.
void leave_fiber(bool for_good) {
  Cluster& c = *running;
  Fiber& f = me();
#if defined(SIMT_ASAN)
  __sanitizer_start_switch_fiber(for_good ? nullptr : &f.fake_stack, c.main_stack, c.main_stack_size);
  swapcontext(&f.context, &c.main_context);
  __sanitizer_finish_switch_fiber(f.fake_stack, &c.main_stack, &c.main_stack_size);
#else
  (void)for_good;
  swapcontext(&f.context, &c.main_context);
#endif
}

[[noreturn]] void fail_here(const std::string& what) {
  Cluster& c = *running;
  if (!c.failed) {
    c.failed = true;
    c.failure = "kernel " + std::string(c.kernel) + ", block " + xyz(c.blocks[me().block].index) + ", thread " +
                xyz(me().thread) + ": " + what;
  }
  leave_fiber(true);
  std::abort();  // a failed launch never resumes its fibers
}

void wait_on(const unsigned long* generation, unsigned long seen, const char* what, Site site) {
  Fiber& f = me();
  f.waiting = true;
  f.wait = Wait{generation, seen, what, site};
  leave_fiber(false);
}

// A lane leaves while lanes of its warp wait for it at a warp operation: nobody could release them.
void check_no_one_waits_for(Block& b, unsigned warp, unsigned lane_bit) {
  for (auto& m : b.meetings[warp])
    if (m->arrived != 0 && (m->mask & lane_bit))
      fail_here("exited while lanes " + lanes_of(m->arrived) + " of its warp wait for it at " + m->what +
                " (mask " + hex(m->mask) + ") at " + where(m->site));
}

void finish_fiber() {
  Cluster& c = *running;
  Fiber& f = me();
  Block& b = c.blocks[f.block];
  const unsigned warp = f.linear / kWarpSize, bit = 1u << (f.linear % kWarpSize);
  b.exited[warp] |= bit;
  check_no_one_waits_for(b, warp, bit);
  f.done = true;
  --b.alive;
  --c.alive;
  // exited threads count as arrived at the barriers the others wait at
  if (b.barrier.arrived != 0 && b.barrier.arrived == b.alive) {
    b.barrier.arrived = 0;
    ++b.barrier.generation;
  }
  if (c.barrier.arrived != 0 && c.barrier.arrived == c.alive) {
    c.barrier.arrived = 0;
    ++c.barrier.generation;
  }
}

void fiber_main() {
  Cluster& c = *running;
#if defined(SIMT_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &c.main_stack, &c.main_stack_size);
#endif
  try {
    c.body(c.arg);
  } catch (const std::exception& e) {
    fail_here(std::string("a C++ exception escaped the kernel: ") + e.what());
  } catch (...) {
    fail_here("a C++ exception escaped the kernel");
  }
  finish_fiber();
  leave_fiber(true);
  std::abort();  // a finished fiber is never resumed
}

// ---- one cluster -------------------------------------------------------------------------------

std::string deadlock_report(const Cluster& c) {
  struct Group {
    unsigned count = 0;
    const Fiber* first = nullptr;
  };
  std::map<std::string, Group> groups;
  unsigned exited = 0;
  for (const Fiber& f : c.fibers) {
    if (f.done) {
      ++exited;
      continue;
    }
    Group& g = groups[std::string(f.wait.what) + " at " + where(f.wait.site)];
    if (g.count++ == 0) g.first = &f;
  }
  std::string s = "deadlock in kernel " + std::string(c.kernel) + ": every remaining thread waits and none can go on;";
  for (const auto& [at, g] : groups)
    s += " " + std::to_string(g.count) + " thread(s) wait at " + at + " (e.g. block " +
         xyz(c.blocks[g.first->block].index) + " thread " + xyz(g.first->thread) + ");";
  s += " " + std::to_string(exited) + " thread(s) have exited";
  return s;
}

void run_cluster(Cluster& c, uint3 first_block, std::mt19937& rng, bool shuffle) {
  const dim3 cl = c.shape.cluster, bd = c.shape.block;
  const unsigned nblocks = cl.x * cl.y * cl.z, nthreads = c.threads_per_block;
  const unsigned warps = (nthreads + kWarpSize - 1) / kWarpSize;
  c.blocks.resize(nblocks);
  c.fibers.resize(std::size_t{nblocks} * nthreads);
  stacks.reserve(c.fibers.size());
  for (unsigned r = 0; r < nblocks; ++r) {
    Block& b = c.blocks[r];
    b.in_cluster = {r % cl.x, (r / cl.x) % cl.y, r / (cl.x * cl.y)};
    b.index = {first_block.x + b.in_cluster.x, first_block.y + b.in_cluster.y, first_block.z + b.in_cluster.z};
    b.alive = nthreads;
    b.barrier = Barrier{};
    b.meetings.clear();
    b.meetings.resize(warps);
    b.exited.assign(warps, 0);
    if (nthreads % kWarpSize) b.exited[warps - 1] = ~0u << (nthreads % kWarpSize);  // lanes that never existed
    release_shared(b);
    b.dynamic_size = c.shape.dynamic_smem;
    b.dynamic = new_shared_bytes(b.dynamic_size, 16);
    for (unsigned t = 0; t < nthreads; ++t) {
      const std::size_t i = std::size_t{r} * nthreads + t;
      Fiber& f = c.fibers[i];
      f = Fiber{};
      f.block = r;
      f.linear = t;
      f.thread = {t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y)};
      f.stack = stacks.stack(i);
#if defined(SIMT_ASAN)
      ASAN_UNPOISON_MEMORY_REGION(f.stack, stacks.size());  // frames left by an abandoned launch
#endif
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack;
      f.context.uc_stack.ss_size = stacks.size();
      f.context.uc_link = nullptr;
      makecontext(&f.context, fiber_main, 0);
    }
  }
  c.alive = nblocks * nthreads;
  c.barrier = Barrier{};

  std::vector<unsigned> order(c.fibers.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<unsigned>(i);
  for (;;) {
    if (shuffle) std::shuffle(order.begin(), order.end(), rng);
    bool left = false, ran = false;
    for (unsigned i : order) {
      Fiber& f = c.fibers[i];
      if (f.done) continue;
      left = true;
      if (f.waiting) {
        if (*f.wait.generation == f.wait.seen) continue;
        f.waiting = false;
      }
      ran = true;
      c.current = static_cast<int>(i);
      threadIdx = f.thread;
      blockIdx = c.blocks[f.block].index;
      enter_fiber(c, f);
      if (c.failed) return;
    }
    if (!left) return;
    if (!ran) {
      c.failed = true;
      c.failure = deadlock_report(c);
      return;
    }
  }
}

}  // namespace

// ---- the public entry points -------------------------------------------------------------------

void set_shuffle_seed(unsigned seed) { seed_setting() = seed; }
unsigned shuffle_seed() { return seed_setting(); }

void run_grid(const char* kernel_name, const GridShape& shape, void (*body)(void*), void* arg) {
  if (running != nullptr) throw KernelFault("a kernel may not launch kernels in the emulated GPU");
  Cluster c;
  c.kernel = kernel_name;
  c.shape = shape;
  c.threads_per_block = shape.block.x * shape.block.y * shape.block.z;
  c.body = body;
  c.arg = arg;
  // whatever happens (a fault, or a stack pool that cannot grow), the thread leaves the launch
  struct Leave {
    Cluster& c;
    dim3 block_dim = blockDim, grid_dim = gridDim;
    ~Leave() {
      running = nullptr;
      blockDim = block_dim;
      gridDim = grid_dim;
      for (Block& b : c.blocks) release_shared(b);
    }
  } leave{c};
  blockDim = shape.block;
  gridDim = shape.grid;
  const unsigned seed = seed_setting();
  std::mt19937 rng(seed);
  running = &c;
  for (unsigned z = 0; z < shape.grid.z && !c.failed; z += shape.cluster.z)
    for (unsigned y = 0; y < shape.grid.y && !c.failed; y += shape.cluster.y)
      for (unsigned x = 0; x < shape.grid.x && !c.failed; x += shape.cluster.x)
        run_cluster(c, uint3{x, y, z}, rng, seed != 0);
  if (c.failed) throw KernelFault("fusedce emulated GPU: " + c.failure);
}

unsigned linear_thread() { return me().linear; }
unsigned lane() { return me().linear % kWarpSize; }

void fault(const std::string& what, Site site) {
  if (running == nullptr) throw KernelFault(what + " at " + where(site));
  fail_here(what + " at " + where(site));
}

void sync_block(Site site) {
  if (running == nullptr) fault("__syncthreads outside a kernel", site);
  Block& b = my_block();
  if (b.barrier.arrived == 0)
    b.barrier.site = site;
  else if (!same_site(b.barrier.site, site))
    fault("reached __syncthreads here while other threads of its block wait at " + where(b.barrier.site) +
              " (a barrier in divergent code)",
          site);
  const unsigned long g = b.barrier.generation;
  if (++b.barrier.arrived == b.alive) {
    b.barrier.arrived = 0;
    ++b.barrier.generation;
  }
  wait_on(&b.barrier.generation, g, "__syncthreads", site);
}

void sync_cluster(Site site) {
  if (running == nullptr) fault("cluster.sync outside a kernel", site);
  Cluster& c = *running;
  if (c.barrier.arrived == 0)
    c.barrier.site = site;
  else if (!same_site(c.barrier.site, site))
    fault("reached cluster.sync() here while other threads of its cluster wait at " + where(c.barrier.site), site);
  const unsigned long g = c.barrier.generation;
  if (++c.barrier.arrived == c.alive) {
    c.barrier.arrived = 0;
    ++c.barrier.generation;
  }
  wait_on(&c.barrier.generation, g, "cluster.sync()", site);
}

namespace {

// Arrival at a warp meeting; returns it and the slot the lanes deposited into.
WarpMeeting& meet(unsigned mask, const void* in, std::size_t size, const char* what, Site site, int& slot) {
  if (running == nullptr) fault(std::string(what) + " outside a kernel", site);
  Block& b = my_block();
  const unsigned ln = lane(), warp = linear_thread() / kWarpSize;
  if (size > 16) fault(std::string(what) + ": values larger than 16 bytes are not modelled", site);
  if (((mask >> ln) & 1u) == 0)
    fault(std::string(what) + " called by lane " + std::to_string(ln) + ", which is not in its mask " + hex(mask), site);
  const unsigned gone = mask & b.exited[warp];
  if (gone != 0)
    fault(std::string(what) + ": its mask " + hex(mask) + " names lanes " + lanes_of(gone) +
              " that have exited or do not exist",
          site);
  auto& list = b.meetings[warp];
  WarpMeeting* m = nullptr;
  for (auto& p : list)
    if (p->mask == mask) m = p.get();
  if (m == nullptr) {
    list.push_back(std::make_unique<WarpMeeting>());
    m = list.back().get();
    m->mask = mask;
  }
  if (m->arrived == 0) {
    m->what = what;
    m->site = site;
  } else if (std::strcmp(m->what, what) != 0) {
    fault(std::string(what) + " (mask " + hex(mask) + ") met lanes " + lanes_of(m->arrived) + " waiting at " + m->what +
              " at " + where(m->site) + ": the lanes of one mask must reach the same warp operation",
          site);
  }
  const unsigned long g = m->generation;
  slot = static_cast<int>(g & 1u);
  if (size != 0) std::memcpy(m->slot[slot][ln], in, size);
  m->arrived |= 1u << ln;
  if (m->arrived == mask) {
    m->arrived = 0;
    ++m->generation;
  }
  wait_on(&m->generation, g, what, site);
  return *m;
}

}  // namespace

void warp_exchange(unsigned mask, const void* in, void* out, std::size_t size, SourceLane source_of, const void* ctx,
                   const char* what, Site site) {
  int slot = 0;
  WarpMeeting& m = meet(mask, in, size, what, site, slot);
  if (out == nullptr) return;
  const int src = source_of(static_cast<int>(lane()), ctx);
  if (src < 0 || src >= kWarpSize || ((mask >> src) & 1u) == 0)
    fault(std::string(what) + ": lane " + std::to_string(lane()) + " reads lane " + std::to_string(src) +
              ", which is not in the mask " + hex(mask) + " (undefined on a GPU)",
          site);
  std::memcpy(out, m.slot[slot][src], size);
}

void warp_gather(unsigned mask, const void* in, void* all32, std::size_t size, const char* what, Site site) {
  int slot = 0;
  WarpMeeting& m = meet(mask, in, size, what, site, slot);
  auto* out = static_cast<unsigned char*>(all32);
  for (int l = 0; l < kWarpSize; ++l) {
    if ((mask >> l) & 1u)
      std::memcpy(out + l * size, m.slot[slot][l], size);
    else
      std::memset(out + l * size, 0, size);
  }
}

unsigned active_lanes() {
  const unsigned warp = linear_thread() / kWarpSize;
  return ~my_block().exited[warp];
}

void* static_shared(const void* tag, std::size_t size, std::size_t align) {
  if (running == nullptr) throw KernelFault("__shared__ variable used outside a kernel");
  Block& b = my_block();
  for (auto& v : b.shared)
    if (v.tag == tag) return v.mem;
  align = std::max<std::size_t>(align, 16);
  b.shared.push_back(SharedVar{tag, size, align, new_shared_bytes(size, align)});
  return b.shared.back().mem;
}

void* dynamic_shared() {
  if (running == nullptr) throw KernelFault("dynamic shared memory used outside a kernel");
  return my_block().dynamic;
}

void* map_shared_rank(const void* p, unsigned rank, Site site) {
  Cluster& c = *running;
  if (rank >= c.blocks.size())
    fault("map_shared_rank: rank " + std::to_string(rank) + " is outside the cluster of " +
              std::to_string(c.blocks.size()) + " blocks",
          site);
  const auto* q = static_cast<const unsigned char*>(p);
  Block& mine = my_block();
  Block& other = c.blocks[rank];
  for (const SharedVar& v : mine.shared)
    if (q >= v.mem && q < v.mem + v.size) {
      const std::size_t off = static_cast<std::size_t>(q - v.mem);
      for (SharedVar& w : other.shared)
        if (w.tag == v.tag) return w.mem + off;
      // the other block has not reached the declaration yet: its variable exists all the same
      other.shared.push_back(SharedVar{v.tag, v.size, v.align, new_shared_bytes(v.size, v.align)});
      return other.shared.back().mem + off;
    }
  if (mine.dynamic != nullptr && q >= mine.dynamic && q < mine.dynamic + mine.dynamic_size)
    return other.dynamic + (q - mine.dynamic);
  fault("map_shared_rank: the pointer is not into this block's shared memory", site);
}

unsigned cluster_rank() {
  const Block& b = my_block();
  const dim3 cl = running->shape.cluster;
  return b.in_cluster.x + cl.x * (b.in_cluster.y + cl.y * b.in_cluster.z);
}
dim3 cluster_dim() { return running->shape.cluster; }
uint3 cluster_index() { return my_block().in_cluster; }

}  // namespace simt
