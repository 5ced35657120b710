// A fix for the private network's cipher (@libp2p/pnet → xsalsa20 1.2.0, the latest). All its instances
// share one WebAssembly memory, but each caches a view of it; when one instance grows the memory (an update
// larger than the 640 KiB it starts with, e.g. a 1 MiB block leaving in one write), every other view is
// detached, looks 0 bytes long, and each of their next updates grows the memory again by a page. Two busy
// connections then ping-pong it to its 64 MB maximum within ~1,000 writes and the agent dies with
// "WebAssembly.Memory.grow(): Maximum memory size exceeded". Measured, not guessed: two instances, one
// 1 MiB update, then 983 alternating 1 kB updates kill it; with this fix they run on.
// The fix hands a stale instance the newest view instead of growing. createMesh applies it before any
// connection exists: any large write trips the bug, artifacts' 1 MiB blocks were only the first.
import xsalsa20Module from 'xsalsa20'

interface XorCore {
  _memory: Uint8Array
  realloc(size: number): void
}
type XSalsa20 = (nonce: Uint8Array, key: Uint8Array) => { _xor: XorCore | object }

let applied = false

export function fixXsalsa20Memory(): void {
  if (applied) return
  applied = true
  // A static import: the bundle must patch the very copy that @libp2p/pnet uses.
  const xsalsa20 = xsalsa20Module as unknown as XSalsa20
  const core = xsalsa20(new Uint8Array(24), new Uint8Array(32))._xor
  if (!('realloc' in core)) return // the pure-JS fallback has no shared memory
  const proto = Object.getPrototypeOf(core) as XorCore
  const realloc = proto.realloc
  let latest: Uint8Array | undefined
  proto.realloc = function (this: XorCore, size: number) {
    if (latest && latest.byteLength > 0 && latest.length > size) {
      this._memory = latest
      return
    }
    realloc.call(this, size)
    latest = this._memory
  }
}
