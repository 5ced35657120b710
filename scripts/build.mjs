// Bundles the CLI and agent into dist/km1s.mjs plus the chunks it imports when a command needs them: a
// bundle starts in ~0.2 s instead of ~0.65 s and saves ~8 MB of RSS per agent over loading node_modules
// file by file (PLATFORM.md). Code splitting keeps the agent (libp2p, LevelDB, the subsystems) out of the
// commands that only talk to the control API: those load the entry and small shared chunks, not the whole
// agent (`km1s nodes` in ~0.05 s instead of ~0.11 s here; five times that on a Pi).
import { mkdirSync, readFileSync, rmSync } from 'node:fs'
import { resolve } from 'node:path'
import { build } from 'esbuild'

// Patched twice below: patches of one file must share one pattern to be applied in one load.
const KAD_REFRESH = /@libp2p[\\/]kad-dht[\\/]dist[\\/]src[\\/]routing-table[\\/]refresh\.js$/

/**
 * Small source patches to dependencies, applied as the bundle is built. Each names its file, the exact text it
 * replaces (the build fails when an upgrade changed it: look again whether the patch is still needed) and why.
 */
const PATCHES = [
  {
    // @libp2p/utils' length-prefixed decoder (noise frames, every length-prefixed stream) asks the length
    // decoder for the next frame's length after consuming every whole frame, and the length decoder throws a
    // RangeError when no byte is left: one exception with a stack trace per chunk received on every
    // connection, ~4 % of an idle agent's CPU in a 10-node lab (docs/mesh.md). An empty buffer has no frame.
    file: /@libp2p[\\/]utils[\\/]dist[\\/]src[\\/]length-prefixed-decoder\.js$/,
    find: '        while (true) {\n            let dataLength;',
    replace: '        while (this.buffer.byteLength > 0) {\n            let dataLength;',
  },
  {
    // @libp2p/yamux answers every data frame with a window update as soon as any byte of the receive window
    // is used: each heartbeat or record on a stream cost a second frame (and socket write) back, ~7 % of an
    // idle agent's CPU in a 10-node lab. Go's yamux, and the spec's advice, send one per half a window.
    file: /@libp2p[\\/]yamux[\\/]dist[\\/]src[\\/]stream\.js$/,
    find: '        if (this.recvWindowCapacity >= this.recvWindow && flags === 0) {',
    replace: '        if (flags === 0 && this.recvWindow - this.recvWindowCapacity < this.recvWindow / 2) {',
  },
  // The peer store sorts protocols, metadata keys and addresses, and compares peer records, with
  // localeCompare: its first call loads ICU's collation (~10 ms of an agent's start, and ~2 MB of the node
  // binary's ICU data resident in every agent). The order only has to be the same every time within one
  // process (the peer store lives in memory), so plain code-unit order does.
  {
    file: /@libp2p[\\/]peer-store[\\/]dist[\\/]src[\\/]utils[\\/]to-peer-pb\.js$/,
    find: 'a.localeCompare(b)',
    replace: '(a < b ? -1 : a > b ? 1 : 0)',
    all: true,
  },
  {
    file: /@libp2p[\\/]peer-store[\\/]dist[\\/]src[\\/]utils[\\/]dedupe-addresses\.js$/,
    find: 'return a.multiaddr.toString().localeCompare(b.multiaddr.toString());',
    replace:
      'const x = a.multiaddr.toString(), y = b.multiaddr.toString(); return x < y ? -1 : x > y ? 1 : 0;',
  },
  {
    file: /@libp2p[\\/]peer-record[\\/]dist[\\/]src[\\/]peer-record[\\/]utils\.js$/,
    find: 'const sort = (a, b) => a.toString().localeCompare(b.toString());',
    replace:
      'const sort = (a, b) => { const x = a.toString(), y = b.toString(); return x < y ? -1 : x > y ? 1 : 0; };',
  },
  // @libp2p/peer-collections keeps peer ids as strings and decodes a new PeerId from base58 at every
  // iteration of a PeerSet or a PeerMap's keys (libp2p's getPeers, kad-dht's closest-peer tagging every 5 s),
  // whose callers then often encode it back with toString(): ~5 % of an idle agent's CPU without the
  // optimizing compilers (docs/mesh.md). Peer ids are immutable values, so the decoded ones are kept,
  // up to 1,024 (a cluster has tens), and handed out again.
  {
    file: /@libp2p[\\/]peer-collections[\\/]dist[\\/]src[\\/]util\.js$/,
    find: 'export function peerIdFromString(str) {',
    replace:
      'const decoded = new Map();\nexport function peerIdFromString(str) {\n    let id = decoded.get(str);\n    if (id === undefined) {\n        id = decodePeerId(str);\n        if (decoded.size >= 1024) decoded.clear();\n        decoded.set(str, id);\n    }\n    return id;\n}\nfunction decodePeerId(str) {',
  },
  // gossipsub's heartbeat runs at whole multiples of its interval from its start; this puts it on the wall
  // clock's grid instead, in the wake-up the agent's own 1 s timers share (src/common/grid.ts).
  {
    file: /@libp2p[\\/]gossipsub[\\/]dist[\\/]src[\\/]gossipsub\.js$/,
    find: 'hearbeatStartMs: Date.now() + constants.GossipsubHeartbeatInitialDelay',
    replace: 'hearbeatStartMs: 0',
  },
  // Noise's default crypto derives its keys with @noble/hashes' HKDF in JavaScript; the shim's runs in OpenSSL
  // (src/mesh/noise-wasm-shim.ts `getHKDF`, reached through the alias of as-sha256 below).
  {
    file: /@libp2p[\\/]noise[\\/]dist[\\/]src[\\/]crypto[\\/]index\.js$/,
    find: "import { digest } from '@chainsafe/as-sha256';",
    replace: "import { digest, getHKDF as opensslHKDF } from '@chainsafe/as-sha256';",
  },
  {
    file: /@libp2p[\\/]noise[\\/]dist[\\/]src[\\/]crypto[\\/]index\.js$/,
    find: 'export const defaultCrypto = {\n    ...pureJsCrypto,',
    replace: 'export const defaultCrypto = {\n    ...pureJsCrypto,\n    getHKDF: opensslHKDF,',
  },
  // kad-dht pings every new contact before it adds it to its routing table, also one that is connected and has
  // just told us by identify that it speaks the DHT protocol (the topology listener's peers): one more stream
  // each way per pair, negotiated, answered and closed, while many nodes start together and wait on the CPU
  // (docs/mesh.md). A connected peer has answered already; others are still pinged.
  {
    file: /@libp2p[\\/]kad-dht[\\/]dist[\\/]src[\\/]routing-table[\\/]index\.js$/,
    find: '    async verifyNewContact(contact, options) {\n',
    replace:
      '    async verifyNewContact(contact, options) {\n        if (this.components.connectionManager.getConnections(contact.peerId).some((c) => c.status === "open")) return true;\n',
  },
  // kad-dht's routing-table refresh finds a random peer id in a k-bucket through a table of 65,536 numbers (a
  // 480 KB module, ~1 MB of every agent's heap and bundle source). src/mesh/kad-prefix.ts finds one by hashing
  // instead, matching only the bits the bucket fixes.
  {
    file: KAD_REFRESH,
    find: 'import GENERATED_PREFIXES from "./generated-prefix-list.js";',
    replace: 'import { kadKeyPrefix } from "km1s:kad-prefix";',
  },
  {
    file: KAD_REFRESH,
    find: 'const keyPrefix = GENERATED_PREFIXES[targetPrefix];',
    replace: 'const keyPrefix = kadKeyPrefix(targetPrefix, targetCommonPrefixLength + 1);',
  },
]

const patchPlugin = {
  name: 'km1s-patches',
  setup(b) {
    // Patches of one file apply in order, in one load.
    const byFile = Map.groupBy(PATCHES, (p) => p.file.source)
    const loaded = new Set()
    for (const [source, patches] of byFile) {
      b.onLoad({ filter: patches[0].file }, (args) => {
        loaded.add(source)
        let text = readFileSync(args.path, 'utf8')
        for (const p of patches) {
          if (!text.includes(p.find))
            throw new Error(`scripts/build.mjs: the patch for ${args.path} no longer applies`)
          text = p.all ? text.replaceAll(p.find, p.replace) : text.replace(p.find, p.replace)
        }
        return { contents: text, loader: 'js' }
      })
    }
    // A patch whose file the bundle no longer loads (a dependency moved or dropped it) would otherwise be
    // skipped without a word, and whatever it fixed would come back unnoticed.
    b.onEnd((result) => {
      if (result.errors.length > 0) return
      const missing = [...byFile.keys()].filter((source) => !loaded.has(source))
      if (missing.length > 0) {
        return {
          errors: missing.map((source) => ({
            text: `scripts/build.mjs: no bundled file matches the patch pattern /${source}/; look again whether the patch is still needed`,
          })),
        }
      }
    })
    // The modules that patches import by a `km1s:` name.
    b.onResolve({ filter: /^km1s:kad-prefix$/ }, () => ({ path: resolve('src/mesh/kad-prefix.ts') }))
  },
}

// Old chunks would pile up beside new ones (their names carry a hash).
rmSync('dist', { recursive: true, force: true })
await build({
  entryPoints: { km1s: 'src/cli/main.ts' },
  outdir: 'dist',
  outExtension: { '.js': '.mjs' },
  splitting: true,
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node22',
  sourcemap: 'linked',
  // Minified but with every identifier kept, and without keepNames: keepNames wraps every function and class
  // in a `__name(fn, "fn")` call (Object.defineProperty on the function), run each time the function is
  // created, and libp2p creates closures per stream and per message; ~30 % of an old node's CPU while a peer
  // joined (docs/mesh.md). Kept identifiers keep the names (stack traces, `constructor.name`) for 0.4 MB
  // more of bundle. A class that collides with another in the bundle is renamed (`TimeoutError2`): match
  // errors by their `name` or `code` property, which libraries set themselves, never by `constructor.name`.
  minifyWhitespace: true,
  minifySyntax: true,
  // classic-level loads a prebuilt native addon relative to its own package directory.
  external: ['classic-level'],
  // Noise's WebAssembly helpers, replaced by Node's own crypto: src/mesh/noise-wasm-shim.ts says why.
  alias: {
    '@chainsafe/as-chacha20poly1305': './src/mesh/noise-wasm-shim.ts',
    '@chainsafe/as-sha256': './src/mesh/noise-wasm-shim.ts',
  },
  banner: {
    js: "import { createRequire as __km1sCreateRequire } from 'node:module'; const require = __km1sCreateRequire(import.meta.url);",
  },
  plugins: [patchPlugin],
  logLevel: 'warning',
})

// A fresh compile cache for the new bundle (bin/km1s points NODE_COMPILE_CACHE at it).
rmSync('dist/.compile-cache', { recursive: true, force: true })
mkdirSync('dist/.compile-cache', { recursive: true })
