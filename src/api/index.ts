// api/: the control API. Every other km1s command is a thin client of the local agent through it:
// HTTP over a Unix socket, a route table of zod schemas (schemas.ts) shared by the server and the client.
export { ApiClient } from './client.ts'
export * from './schemas.ts'
export { ApiServer, type Handlers, type StreamHandlers } from './server.ts'
