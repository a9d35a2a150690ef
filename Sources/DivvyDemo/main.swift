import Divvy

let slab = try SlabBuilder(Layout.of(Int.self)).finishUnsynchronized(SystemAllocator())
print("slab stride \(slab.configuration.stride)")
