// The wire of /km1s/remote/1.0.0 (pure): the control API's exec frame codec, `[type u8][length u32 BE]
// [payload ≤ 64 KiB]`, reused as it is — the exec frames cross the mesh unchanged, and its decoder already
// refuses an oversized length from the header, before any payload is buffered. Remote adds four types.
import { ExecRequestView, Frame, LogEntryView } from '../api/schemas.ts'
import { Km1sError } from '../common/errors.ts'
import * as z from '../common/schema.ts'
import { ContainerName, ProcessName } from '../runtime/types.ts'

export const REMOTE_PROTOCOL = '/km1s/remote/1.0.0'

/** Exec frames keep the API's numbers (1–7, `error` included); the ones below are remote's own. */
export const RemoteFrame = {
  ...Frame,
  /** client → server, first and only once: JSON `RemoteRequest`. */
  request: 16,
  /** server → client: accepted (the container is here; for exec the program started). */
  ready: 17,
  /** server → client: one JSON item (a log entry, a container status). */
  item: 18,
  /** server → client: no more items; the server closes next. */
  end: 19,
} as const

/** A request is small: a container name and at most an exec's argv and environment. */
export const MAX_REQUEST_BYTES = 32 * 1024

export const LogsOp = z.strictObject({
  op: z.literal('logs'),
  container: ContainerName,
  process: z.optional(ProcessName),
  sinceMs: z.optional(z.number().check(z.int(), z.minimum(0))),
  tail: z.optional(z.number().check(z.int(), z.minimum(0), z.maximum(1_000_000))),
  follow: z.optional(z.boolean()),
})
export const ExecOp = z.strictObject({ op: z.literal('exec'), ...ExecRequestView.shape })
/** The node's containers; with a name only that one (a `where`: ERR_NOT_HERE when it is not there). */
export const ListOp = z.strictObject({ op: z.literal('list'), container: z.optional(ContainerName) })
export const RemoteRequest = z.discriminatedUnion('op', [LogsOp, ExecOp, ListOp])
export type RemoteRequest = z.infer<typeof RemoteRequest>
export type LogsOp = z.infer<typeof LogsOp>
export type ExecOp = z.infer<typeof ExecOp>
export type ListOp = z.infer<typeof ListOp>

export const RemoteError = z.object({
  code: z.string().check(z.maxLength(64)),
  message: z.string().check(z.maxLength(4096)),
})
export { LogEntryView }

/**
 * The answer when the container is not on the answering node: internal to the protocol, so a client that
 * guessed the node (a stale status record or cache) moves on to the next one instead of giving up.
 */
export const ERR_NOT_HERE = 'ERR_NOT_HERE'

/** The request in its frame's payload, or a Km1sError saying in one sentence what is wrong with it. */
export function decodeRequest(type: number, payload: Uint8Array): RemoteRequest {
  if (type !== RemoteFrame.request)
    throw new Km1sError('ERR_BAD_FRAME', `The first frame must be a request (type 16), not type ${type}.`)
  if (payload.length > MAX_REQUEST_BYTES)
    throw new Km1sError(
      'ERR_BAD_FRAME',
      `A request of ${payload.length} bytes is over the ${MAX_REQUEST_BYTES}-byte limit.`,
    )
  let json: unknown
  try {
    json = JSON.parse(Buffer.from(payload).toString('utf8'))
  } catch {
    throw new Km1sError('ERR_BAD_FRAME', 'The request is not JSON.')
  }
  const parsed = RemoteRequest.safeParse(json)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    const where = issue && issue.path.length > 0 ? issue.path.join('.') : 'request'
    throw new Km1sError('ERR_BAD_FRAME', `Invalid ${where}: ${issue?.message ?? 'not a request'}.`)
  }
  return parsed.data
}

/** JSON of a payload, or undefined. */
export function jsonOf(payload: Uint8Array): unknown {
  try {
    return JSON.parse(Buffer.from(payload).toString('utf8'))
  } catch {
    return undefined
  }
}
