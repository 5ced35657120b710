// The persisted peer book: every peer this node has been connected to, with its announced addresses,
// so a restarted node (or one whose peers restarted) reconnects without waiting for mDNS.
// Written only when a peer's addresses change: an SD card must not see a write per connection.
import type { AbstractSublevel } from 'abstract-level'
import * as z from '../common/schema.ts'

export const PeerBookEntry = z.object({
  addrs: z.array(z.string().check(z.maxLength(300))).check(z.maxLength(32)),
  firstSeen: z.number(),
})
export type PeerBookEntry = z.infer<typeof PeerBookEntry>

// biome-ignore lint/suspicious/noExplicitAny: the parent database type does not matter here
export type PeerBookStore = AbstractSublevel<any, any, string, PeerBookEntry>

export class PeerBook {
  readonly #store: PeerBookStore
  readonly #entries = new Map<string, PeerBookEntry>()

  constructor(store: PeerBookStore) {
    this.#store = store
  }

  async load(): Promise<void> {
    for await (const [peer, value] of this.#store.iterator()) {
      const parsed = PeerBookEntry.safeParse(value)
      if (parsed.success) this.#entries.set(peer, parsed.data)
    }
  }

  entries(): ReadonlyMap<string, PeerBookEntry> {
    return this.#entries
  }

  /** Records a peer's addresses; resolves once they are on disk, if they changed. */
  async remember(peer: string, addrs: string[], now = Date.now()): Promise<boolean> {
    const sorted = [...new Set(addrs)].sort().slice(0, 32)
    const prev = this.#entries.get(peer)
    if (prev && prev.addrs.length === sorted.length && prev.addrs.every((a, i) => a === sorted[i]))
      return false
    const entry = { addrs: sorted, firstSeen: prev?.firstSeen ?? now }
    this.#entries.set(peer, entry)
    await this.#store.put(peer, entry)
    return true
  }

  async forget(peer: string): Promise<void> {
    this.#entries.delete(peer)
    await this.#store.del(peer)
  }
}
