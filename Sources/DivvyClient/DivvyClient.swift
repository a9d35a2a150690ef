import Divvy
import DivvyProtocol
import DivvyShm
import DivvyTransport
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A handle to a block in the daemon's shared memory: 128 bits (`low`, `high`: offset, generation and heap id) that
/// mean the same block in every process connected to the same daemon. Pass both words to another process by any
/// means; it adopts it. A handle kept from before the daemon restarted names another heap and is refused
/// (`foreignHandle`).
public typealias SharedHandle = SharedHeapHandle

/// A connection to divvyd: allocates, frees, shares and adopts blocks of the daemon's shared memory.
///
/// ```swift
/// let client = try DivvyClient(.init(name: "producer"))
/// do {
///     var block = try client.allocate(4096)      // a ~Copyable owner of the block
///     var bytes = block.mutableBytes
///     bytes.storeBytes(of: 42, toByteOffset: 0, as: UInt64.self)
///     let token = try client.share(block.handle).token  // one token lets one consumer adopt, once
///     // send block.handle and token to another process, which calls adopt(handle, token: token);
///     // ... wait until the consumer says it adopted the handle (freeing first would leave it a stale handle) ...
///     try block.free()                           // or let it go out of scope: dropping frees it
/// }
/// ```
///
/// The whole hand-over, with who holds the block at each step: the DivvyClient catalog's "Sharing blocks between
/// processes" article (`Sources/DivvyClient/DivvyClient.docc/SharingBlocks.md`).
///
/// ## Two modes, one API
/// - **Direct** (the policy grants it to trusted uids/gids): the client maps the whole region, joins the heap as a
///   participant and allocates and frees in shared memory with no system call; frees of blocks in other
///   processes' pages are lock-free remote frees. The daemon grants a page lease (quota); when it runs out the
///   client leases more pages over the socket, transparently.
/// - **Mediated**: every allocate/free/adopt is one round trip to the daemon, which does all metadata work; the
///   client maps only the data area.
///
/// `Options.mode` `.any` (the default) takes direct access when the policy allows it.
///
/// ## Errors and the daemon's death
/// Every call throws `DivvyClientError`; nothing traps on the daemon's behaviour. When the daemon is gone the
/// next call that needs it throws `.daemonGone`; `reconnect()` connects again (blocks of the old connection are
/// lost with it: the daemon reclaims them when the connection ends).
///
/// Not `Sendable`: use one client per thread (a direct client is one heap participant).
public final class DivvyClient {
    /// How to connect.
    public struct Options: Hashable, Sendable {
        /// The daemon's socket; nil: `$DIVVY_SOCKET`, else the default path (`DivvySocketPath.resolve`).
        public var socketPath: String?
        /// A name for this client, shown by `divvyctl clients` (at most 255 bytes).
        public var name: String
        /// The access mode to ask for. Default `.any` (direct when allowed).
        public var mode: ClientMode
        /// How long to wait for a reply before `.timedOut`. Default 10 s.
        public var timeoutMilliseconds: Int
        /// Pages to lease at a time when the direct page lease runs out. Default 16.
        public var leaseStep: Int

        /// Creates options; see the properties.
        public init(
            socketPath: String? = nil, name: String = "client", mode: ClientMode = .any,
            timeoutMilliseconds: Int = 10_000, leaseStep: Int = 16
        ) {
            self.socketPath = socketPath
            self.name = name
            self.mode = mode
            self.timeoutMilliseconds = timeoutMilliseconds
            self.leaseStep = leaseStep
        }
    }

    /// The options this client connected with.
    public let options: Options
    /// The socket path in use.
    public let socketPath: String
    /// The id the daemon gave this connection.
    public private(set) var clientID: UInt32 = 0
    /// The mode the daemon granted.
    public private(set) var mode: ClientMode = .mediated
    /// The bytes this client may hold.
    public private(set) var quotaBytes = 0
    /// The block sizes of the daemon's size classes.
    public private(set) var sizeClasses: [Int] = []
    /// Pages this (direct) client may own.
    public private(set) var pageAllowance = 0

    private var socket: SeqpacketSocket?
    private var nextRequestID: UInt64 = 1
    private var sendBuffer: [UInt8] = []
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    // Direct mode. The strong references keep the heap and participant alive; the hot paths call through
    // unmanaged copies (`_withUnsafeGuaranteedRef`), which cost no reference counting: a retain/release pair is two
    // locked instructions, more than a shared-memory allocation itself.
    private var heap: SharedHeap? {
        didSet { fastHeap = heap.map { Unmanaged.passUnretained($0) } }
    }
    private var participant: SharedHeap.Participant? {
        didSet { fastParticipant = participant.map { Unmanaged.passUnretained($0) } }
    }
    // Invariant: the same objects as `heap` / `participant`, which keep them alive while these are non-nil.
    private var fastHeap: Unmanaged<SharedHeap>?
    private var fastParticipant: Unmanaged<SharedHeap.Participant>?
    // Mediated mode.
    private var dataArea: SharedMapping?
    /// Mediated mode: the handles this connection holds through the daemon, by data offset, with how many holdings
    /// of each (the daemon counts a re-adopt as another holding). What `handle(for:)` answers from: a mediated
    /// client does not map the metadata, but it knows every block it holds, because each came through it.
    private var mediatedHoldings: [Int: (handle: SharedHandle, count: Int)] = [:]

    /// Connects, says hello, and maps the region (all of it in direct mode, the data area in mediated mode).
    ///
    /// - Throws: `.noDaemon` when nothing listens at the socket path (the message says how to start divvyd),
    ///   `.refused` with the daemon's error (policy, version, too many clients), `.protocolViolation`,
    ///   `.timedOut`, `.system`.
    public init(_ options: Options = Options()) throws(DivvyClientError) {
        self.options = options
        self.socketPath = DivvySocketPath.resolve(options.socketPath)
        receiveBuffer = .allocate(byteCount: ProtocolLimits.maxFrameSize + 1, alignment: 16)
        // A failed connect throws after every stored property is initialized, so `deinit` runs and frees the
        // buffer.
        try connect()
    }

    deinit {
        close()
        receiveBuffer.deallocate()
    }

    /// Whether the client is connected (as far as it knows).
    public var isConnected: Bool { socket != nil }

    private func connect() throws(DivvyClientError) {
        let socket: SeqpacketSocket
        do throws(TransportError) {
            socket = try SeqpacketSocket.connect(path: socketPath)
            try socket.setReceiveTimeout(milliseconds: options.timeoutMilliseconds)
        } catch {
            if error.code == .noListener {
                throw DivvyClientError(
                    .noDaemon, "no daemon at \(socketPath): start it with `swift run divvyd` (or `systemctl start "
                        + "divvyd`), or point DIVVY_SOCKET at its socket")
            }
            throw DivvyClientError(.system, "cannot connect to \(socketPath): \(error)")
        }
        self.socket = socket
        do throws(DivvyClientError) {
            try handshake()
        } catch {
            self.socket = nil
            participant = nil
            heap = nil
            dataArea = nil
            throw error
        }
    }

    private func handshake() throws(DivvyClientError) {
        let hello = Hello(
            minVersion: ProtocolVersion.supported.lowerBound, maxVersion: ProtocolVersion.supported.upperBound,
            mode: options.mode, capabilities: 0, name: String(decoding: options.name.utf8.prefix(255), as: UTF8.self))
        let welcome: Welcome
        switch try request(.hello(hello)).message {
        case .welcome(let value): welcome = value
        case let other: throw unexpected(other, for: .hello)
        }
        clientID = welcome.clientID
        mode = welcome.mode
        quotaBytes = Int(welcome.quotaBytes)
        sizeClasses = welcome.sizeClasses.map { Int($0) }

        let (reply, descriptors) = try requestWithDescriptors(.mapRegion)
        defer { for descriptor in descriptors { _ = Glibc.close(descriptor) } }
        guard case .region(let grant) = reply.message else { throw unexpected(reply.message, for: .mapRegion) }
        guard grant.access == 1 else {
            throw DivvyClientError(
                .protocolViolation, "the daemon granted region access \(grant.access), which this client does not know")
        }
        if welcome.mode == .direct {
            // The region file, then (when the daemon keeps the data apart) the data object to map over its data area.
            guard let regionDescriptor = descriptors.first else {
                throw DivvyClientError(.protocolViolation, "the daemon's region reply carried no file descriptor")
            }
            let region: SharedRegion
            do throws(SharedRegionError) {
                region = try SharedRegion.open(
                    fileDescriptor: FileDescriptor(rawValue: regionDescriptor),
                    dataFileDescriptor: descriptors.count > 1 ? FileDescriptor(rawValue: descriptors[1]) : nil)
            } catch {
                throw DivvyClientError(.system, "cannot map the daemon's region: \(error)")
            }
            do throws(SharedHeapError) {
                heap = try SharedHeap.attach(to: region)
            } catch {
                throw DivvyClientError(.protocolViolation, "the daemon's region holds no usable heap: \(error)")
            }
            do throws(SharedHeapError) {
                participant = try heap!.join(name: options.name)
            } catch {
                throw DivvyClientError(.heap(error), "cannot join the daemon's heap: \(error)")
            }
            switch try request(.join(participant: UInt32(participant!.index))).message {
            case .joined(let pages): pageAllowance = Int(pages)
            case let other: throw unexpected(other, for: .join)
            }
        } else {
            // Mediated: one descriptor, the data object (or, from a daemon without one, the region file, whose
            // data area starts at the grant's offset).
            guard descriptors.count == 1, let descriptor = descriptors.first else {
                throw DivvyClientError(
                    .protocolViolation, "the daemon's region reply carried \(descriptors.count) descriptors, not 1")
            }
            let kind: OSAllocator.PageKind =
                switch welcome.pageKind {
                case .base: .base
                case .transparentHuge: .transparent
                case .huge2M: .explicit2MiB
                case .huge1G: .explicit1GiB
                }
            let geometry = SharedRegionGeometry(
                totalSize: Int(welcome.regionSize), pageSize: kind == .transparent ? 4096 : kind.pageSize,
                headerSize: Int(welcome.metadataOffset), metadataOffset: Int(welcome.metadataOffset),
                metadataSize: Int(welcome.metadataSize), dataOffset: Int(welcome.dataOffset),
                dataSize: Int(grant.length))
            do throws(SharedRegionError) {
                dataArea =
                    grant.offset == 0
                    ? try SharedRegion.mapDataObject(
                        FileDescriptor(rawValue: descriptor), geometry: geometry, access: .readWrite)
                    : try SharedRegion.mapDataArea(
                        of: FileDescriptor(rawValue: descriptor), geometry: geometry, access: .readWrite)
            } catch {
                throw DivvyClientError(.system, "cannot map the daemon's data area: \(error)")
            }
        }
    }

    /// Ends the connection: a direct client leaves the heap (freeing what it holds), then says goodbye; the
    /// daemon reclaims whatever the connection still held. Idempotent.
    public func close() {
        // The slot stays *leaving* (taken, holding nothing) until the daemon has processed the goodbye and frees
        // it: were it freed here, another process could join into it and present it to the daemon before the
        // daemon has seen this session end, and be refused.
        participant?.leave(releasingSlot: socket == nil)
        participant = nil
        if socket != nil {
            _ = try? request(.goodbye)
        }
        socket = nil
        heap = nil
        dataArea = nil
        mediatedHoldings.removeAll()
    }

    /// Closes (if needed) and connects again, with the same options. Blocks held through the old connection
    /// are gone (the daemon reclaimed them).
    ///
    /// - Throws: as `init`.
    public func reconnect() throws(DivvyClientError) {
        close()
        try connect()
    }

    // MARK: Blocks

    /// Allocates a block of at least `size` bytes, held by this client.
    ///
    /// - Throws: `.heap`/`.refused` with `unsupportedSize`, `quotaExceeded`, `heapFull`; `.daemonGone`.
    public func allocate(_ size: Int) throws(DivvyClientError) -> SharedBlock {
        let (handle, blockSize, address) = try allocateBlock(size)
        return SharedBlock(client: self, handle: handle, size: blockSize, base: address)
    }

    /// Allocates a block and returns its raw handle (the caller frees it with `free(_:)`).
    public func allocateHandle(_ size: Int) throws(DivvyClientError) -> (handle: SharedHandle, blockSize: Int) {
        let (handle, blockSize, _) = try allocateBlock(size)
        return (handle, blockSize)
    }

    /// Allocates a block and returns its raw handle, its size and its address in this process (the caller frees
    /// it with `free(_:)`). Direct clients get all three from the allocation itself, with no second look-up.
    ///
    /// - Throws: as `allocate(_:)`.
    public func allocateBlock(
        _ size: Int
    ) throws(DivvyClientError) -> (handle: SharedHandle, blockSize: Int, address: UnsafeMutableRawPointer) {
        if let participant = fastParticipant {
            while true {
                // Safe: `self.participant` keeps it alive for the duration of the call.
                let result = participant._withUnsafeGuaranteedRef {
                    participant -> Result<(SharedHandle, Int, UnsafeMutableRawPointer), SharedHeapError> in
                    do throws(SharedHeapError) {
                        return .success(try participant.allocateBlock(size))
                    } catch {
                        return .failure(error)
                    }
                }
                switch result {
                case .success(let allocated): return allocated
                case .failure(let error) where error.code == .pageAllowanceExhausted: try leaseMore()
                case .failure(let error): throw DivvyClientError(.heap(error), error.message)
                }
            }
        }
        switch try request(.allocate(size: UInt64(max(0, size)))).message {
        case .allocated(let wire, let blockSize):
            let handle = SharedHandle(wire)
            do throws(DivvyClientError) {
                let address = try pointer(for: handle)
                noteMediatedHolding(handle)
                return (handle, Int(blockSize), address)
            } catch {
                // The daemon granted a block outside the data area we mapped: do not leak it.
                _ = try? free(handle)
                throw error
            }
        case let other: throw unexpected(other, for: .allocate)
        }
    }

    private func leaseMore() throws(DivvyClientError) {
        switch try request(.lease(pages: UInt32(max(1, options.leaseStep)))).message {
        case .leased(let pages): pageAllowance = Int(pages)
        case let other: throw unexpected(other, for: .lease)
        }
    }

    /// Drops this client's holding of `handle`; returns true when that released the block (no holder left).
    ///
    /// - Throws: `.heap`/`.refused` with `doubleFree`, `staleHandle`, `notHolder`, `invalidHandle`,
    ///   `misalignedHandle`; nothing changes then.
    @discardableResult
    public func free(_ handle: SharedHandle) throws(DivvyClientError) -> Bool {
        if let participant = fastParticipant {
            // Safe: `self.participant` keeps it alive for the duration of the call.
            let result = participant._withUnsafeGuaranteedRef { participant -> Result<Bool, SharedHeapError> in
                do throws(SharedHeapError) {
                    return .success(try participant.free(handle))
                } catch {
                    return .failure(error)
                }
            }
            switch result {
            case .success(let released): return released
            case .failure(let error): throw DivvyClientError(.heap(error), error.message)
            }
        }
        switch try request(.free(handle: handle.wire)).message {
        case .freed(let released):
            dropMediatedHolding(handle)
            return released
        case let other: throw unexpected(other, for: .free)
        }
    }

    /// Takes a holding of a block another process allocated and shared: the block stays alive until every holder
    /// freed it.
    ///
    /// - Parameters:
    ///   - handle: The block, as the sharer passed it.
    ///   - token: The share token the sharer got from `share(_:)` for this handle (`SharedInfo.token`), passed with
    ///     the handle. A mediated client's adopt uses it up (one token, one adopt); a direct client adopts in shared
    ///     memory, which it may write anyway, and does not use it (PROTOCOL.md 6.4).
    /// - Throws: `.refused(.badShareToken)` (mediated: a wrong, used or dead token; nothing changed), `.heap` or
    ///   `.refused` with `staleHandle` (freed meanwhile), `invalidHandle`, `alreadyHolder`, `quotaExceeded`.
    public func adopt(_ handle: SharedHandle, token: UInt64) throws(DivvyClientError) -> SharedBlock {
        let blockSize = try adoptHandle(handle, token: token)
        return try SharedBlock(client: self, handle: handle, size: blockSize, base: pointer(for: handle))
    }

    /// Adopts a block by handle and share token and returns its size (the caller frees the handle with
    /// `free(_:)`). See `adopt(_:token:)`.
    public func adoptHandle(_ handle: SharedHandle, token: UInt64) throws(DivvyClientError) -> Int {
        if let participant, let heap {
            do throws(SharedHeapError) {
                try participant.adopt(handle)
                return try heap.blockSize(of: handle)
            } catch {
                throw DivvyClientError(.heap(error), error.message)
            }
        }
        switch try request(.adopt(handle: handle.wire, token: token)).message {
        case .adopted(_, let size):
            noteMediatedHolding(handle)
            return Int(size)
        case let other: throw unexpected(other, for: .adopt)
        }
    }

    /// Lets one other client adopt `handle`, which this client holds: the daemon checks the holding and answers
    /// the block's offset, size and holders, and a new share token (`SharedInfo.token`). Pass the handle and the
    /// token to the adopter; the token lets one client adopt once, and dies when this client stops holding the
    /// block (free it only after the adopter says it adopted). Share once per adopter.
    ///
    /// - Throws: `.refused` with `notHolder`, `staleHandle`, `invalidHandle`, `foreignHandle`, or `quotaExceeded`
    ///   when this client has `max-share-tokens-per-client` tokens outstanding.
    public func share(_ handle: SharedHandle) throws(DivvyClientError) -> SharedInfo {
        switch try request(.share(handle: handle.wire)).message {
        case .shared(let info): return info
        case let other: throw unexpected(other, for: .share)
        }
    }

    /// Allocates `count` blocks of `size` bytes in one round trip (all or none); the caller frees the handles.
    ///
    /// In direct mode the blocks come from shared memory directly (no round trip at all).
    public func allocateBatch(size: Int, count: Int) throws(DivvyClientError) -> [SharedHandle] {
        if participant != nil {
            var handles: [SharedHandle] = []
            handles.reserveCapacity(count)
            do throws(DivvyClientError) {
                for _ in 0..<count { handles.append(try allocateHandle(size).handle) }
            } catch {
                for handle in handles { _ = try? free(handle) }
                throw error
            }
            return handles
        }
        switch try request(.allocateBatch(size: UInt64(max(0, size)), count: UInt32(clamping: count))).message {
        case .allocatedBatch(_, let wire):
            let handles = wire.map(SharedHandle.init(_:))
            for handle in handles { noteMediatedHolding(handle) }
            return handles
        case let other: throw unexpected(other, for: .allocateBatch)
        }
    }

    /// Frees many handles in one round trip; each gets its own status (released, still held, or its error).
    public func freeBatch(_ handles: [SharedHandle]) throws(DivvyClientError) -> [FreedStatus] {
        if participant != nil {
            return handles.map { handle in
                do throws(DivvyClientError) {
                    return try free(handle) ? .released : .stillHeld
                } catch {
                    return FreedStatus(error: error.protocolCode ?? .internalError)
                }
            }
        }
        switch try request(.freeBatch(handles: handles.map(\.wire))).message {
        case .freedBatch(let statuses):
            for (handle, status) in zip(handles, statuses) where status.error == nil { dropMediatedHolding(handle) }
            return statuses
        case let other: throw unexpected(other, for: .freeBatch)
        }
    }

    // MARK: Translation

    /// The address of the handle's block in this process.
    ///
    /// Direct clients check the handle against the heap (stale handles throw). Mediated clients, which do not map
    /// the metadata, can only check that the offset lies in the data area.
    public func pointer(for handle: SharedHandle) throws(DivvyClientError) -> UnsafeMutableRawPointer {
        if let heap = fastHeap {
            // Safe: `self.heap` keeps it alive for the duration of the call.
            let result = heap._withUnsafeGuaranteedRef { heap -> Result<UnsafeMutableRawPointer, SharedHeapError> in
                do throws(SharedHeapError) {
                    return .success(try heap.pointer(for: handle))
                } catch {
                    return .failure(error)
                }
            }
            switch result {
            case .success(let pointer): return pointer
            case .failure(let error): throw DivvyClientError(.heap(error), error.message)
            }
        }
        guard let dataArea else { throw DivvyClientError(.daemonGone, "the client is not connected") }
        do throws(SharedRegionError) {
            return try dataArea.unsafePointer(forOffset: dataArea.regionOffset + handle.dataOffset, length: 16)
        } catch {
            throw DivvyClientError(.refused(.invalidHandle), "\(handle) is outside the data area: \(error)")
        }
    }

    /// The handle of the block starting at `pointer`, exact, with its generation. Direct clients check it against
    /// the heap (any allocated block). Mediated clients answer from the blocks this connection holds (each came
    /// through it: allocate, allocateBatch, adopt), with no round trip.
    ///
    /// - Throws: `.refused(.invalidHandle)` (not in the data area); direct: `.heap` with `misaligned` (not a block
    ///   start) or `staleHandle` (no allocated block there); mediated: `.refused(.notHolder)` (this client holds
    ///   no block there); `.daemonGone`.
    public func handle(for pointer: UnsafeRawPointer) throws(DivvyClientError) -> SharedHandle {
        if let heap {
            do throws(SharedHeapError) {
                return try heap.handle(for: pointer)
            } catch {
                throw DivvyClientError(.heap(error), error.message)
            }
        }
        guard let dataArea else { throw DivvyClientError(.daemonGone, "the client is not connected") }
        let offset: Int
        do throws(SharedRegionError) {
            offset = try dataArea.offset(of: pointer) - dataArea.regionOffset
        } catch {
            throw DivvyClientError(.refused(.invalidHandle), "address is outside the data area: \(error)")
        }
        guard let held = mediatedHoldings[offset] else {
            throw DivvyClientError(
                .refused(.notHolder),
                "this client holds no block starting at data offset \(offset) (a mediated client knows the handles "
                    + "of the blocks it allocated or adopted; use the handle you were given)")
        }
        return held.handle
    }

    /// Records one more mediated holding of `handle`.
    private func noteMediatedHolding(_ handle: SharedHandle) {
        let offset = handle.dataOffset
        if let held = mediatedHoldings[offset], held.handle == handle {
            mediatedHoldings[offset] = (handle, held.count + 1)
        } else {
            // A different handle at the same offset replaces a stale record (the daemon only grants live blocks).
            mediatedHoldings[offset] = (handle, 1)
        }
    }

    /// Forgets one mediated holding of `handle` (after the daemon accepted its free).
    private func dropMediatedHolding(_ handle: SharedHandle) {
        let offset = handle.dataOffset
        guard let held = mediatedHoldings[offset], held.handle == handle else { return }
        mediatedHoldings[offset] = held.count > 1 ? (handle, held.count - 1) : nil
    }

    // MARK: Daemon calls

    /// This client's usage and the heap's, from the daemon.
    ///
    /// A direct client's own holdings live in shared memory, not in the daemon's records: the reply's
    /// `bytesHeld` and `blocksHeld` (what the client holds through the daemon) are completed here with the
    /// blocks its participant holds. O(blocks held). The heap-wide figures (`heapBytesUsed`, `heapBytesFree`) may be
    /// up to 100 ms old (the daemon counts the heap's usage at most that often; PROTOCOL.md, `stats`).
    public func stats() throws(DivvyClientError) -> ClientStats {
        var stats: ClientStats
        switch try request(.stats).message {
        case .statsReply(let reply): stats = reply
        case let other: throw unexpected(other, for: .stats)
        }
        if let participant, let heap {
            for handle in participant.heldHandles {
                stats.blocksHeld += 1
                stats.bytesHeld += UInt64((try? heap.blockSize(of: handle)) ?? 0)
            }
        }
        return stats
    }

    /// A round trip carrying `payload` (echoed back).
    @discardableResult
    public func ping(_ payload: [UInt8] = []) throws(DivvyClientError) -> [UInt8] {
        switch try request(.ping(payload: payload)).message {
        case .pong(let echoed): return echoed
        case let other: throw unexpected(other, for: .ping)
        }
    }

    /// Runs an admin operation (`divvyctl`'s calls); needs an admin uid/gid in the daemon's policy.
    ///
    /// `argument` is the client id for `.disconnect`, and for `.clients` the id the page starts after: one reply
    /// holds only the clients that fit a frame, so read the whole list by repeating the call with the last id
    /// received until a page is empty (`Protocol/PROTOCOL.md`, "Admin paging").
    public func admin(_ operation: AdminOperation, argument: UInt32 = 0) throws(DivvyClientError) -> AdminReply {
        switch try request(.admin(operation, argument: argument)).message {
        case .adminReply(let reply): return reply
        case let other: throw unexpected(other, for: .admin)
        }
    }

    // MARK: Wire

    private func unexpected(_ message: Message, for type: MessageType) -> DivvyClientError {
        DivvyClientError(.protocolViolation, "the daemon answered \(type) with \(message.type)")
    }

    /// Sends a request and waits for its reply (an error reply is thrown as `.refused`).
    @discardableResult
    public func request(_ message: Message) throws(DivvyClientError) -> Frame {
        let (frame, descriptors) = try requestWithDescriptors(message)
        for descriptor in descriptors { _ = Glibc.close(descriptor) }
        return frame
    }

    private func requestWithDescriptors(_ message: Message) throws(DivvyClientError) -> (Frame, [Int32]) {
        guard let socket else {
            throw DivvyClientError(.daemonGone, "not connected to the daemon; call reconnect()")
        }
        let id = nextRequestID
        nextRequestID &+= 1
        sendBuffer.removeAll(keepingCapacity: true)
        Frame(requestID: id, message: message).encode(into: &sendBuffer)
        do throws(TransportError) {
            _ = try socket.send(sendBuffer)
        } catch {
            self.socket = nil
            // A daemon that refused the connection (policy, too many clients) sent its reason before closing.
            if case .datagram(let count, let descriptor, _)? = try? socket.receive(into: receiveBuffer),
                case .error(let reply)? = try? Frame.decode(UnsafeRawBufferPointer(rebasing: receiveBuffer[0..<count]))
                    .message
            {
                if let descriptor { _ = Glibc.close(descriptor) }
                throw DivvyClientError(.refused(reply.code), reply.message)
            }
            throw DivvyClientError(.daemonGone, "the daemon at \(socketPath) is gone (\(error)); call reconnect()")
        }
        while true {
            var result: SeqpacketSocket.ReceiveResult
            var descriptors: [Int32] = []
            do throws(TransportError) {
                do throws(TransportError) {
                    result = try socket.receive(into: receiveBuffer, descriptors: &descriptors, capacity: 2)
                } catch where error.code == .closed {
                    // ECONNRESET is reported before datagrams still queued (a refusal sent just before the daemon
                    // closed): read once more to get them.
                    result = try socket.receive(into: receiveBuffer, descriptors: &descriptors, capacity: 2)
                }
            } catch {
                if error.code == .timedOut {
                    throw DivvyClientError(.timedOut, "no reply from the daemon within \(options.timeoutMilliseconds) ms")
                }
                self.socket = nil
                throw DivvyClientError(.daemonGone, "the daemon at \(socketPath) is gone (\(error)); call reconnect()")
            }
            switch result {
            case .endOfFile, .wouldBlock:
                self.socket = nil
                throw DivvyClientError(.daemonGone, "the daemon at \(socketPath) closed the connection; call reconnect()")
            case .datagram(let count, _, _):
                func closeDescriptors() { for descriptor in descriptors { _ = Glibc.close(descriptor) } }
                let frame: Frame
                do throws(ProtocolError) {
                    frame = try Frame.decode(UnsafeRawBufferPointer(rebasing: receiveBuffer[0..<count]))
                } catch {
                    closeDescriptors()
                    throw DivvyClientError(.protocolViolation, "the daemon sent an invalid frame: \(error)")
                }
                if case .shutdown(let reason) = frame.message {
                    // Unsolicited: the daemon is going away. Further requests will find it gone.
                    closeDescriptors()
                    shutdownReason = reason
                    continue
                }
                if case .error(let reply) = frame.message {
                    closeDescriptors()
                    if reply.code.closesConnection { self.socket = nil }
                    throw DivvyClientError(.refused(reply.code), reply.message)
                }
                guard frame.requestID == id else {
                    closeDescriptors()
                    continue  // A late reply to an earlier request that timed out.
                }
                return (frame, descriptors)
            }
        }
    }

    /// The reason the daemon gave when it announced its shutdown, if it did.
    public private(set) var shutdownReason: String?
}

extension SharedHandle {
    /// The handle received in a message: the same 128 bits.
    @inline(__always)
    public init(_ wire: WireHandle) {
        self.init(low: wire.low, high: wire.high)
    }

    /// The handle as messages carry it.
    @inline(__always)
    public var wire: WireHandle { WireHandle(low: low, high: high) }
}
