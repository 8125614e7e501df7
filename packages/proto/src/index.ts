// Public names of the generated protobuf code (src/gen, from proto/ by `pnpm generate`) and the device
// frame codec. Listed one by one so that nothing leaks by `export *`.

export { descriptorSetPath } from './descriptor.js';
export {
  decodeClientFrame,
  decodeServerFrame,
  encodeClientFrame,
  encodeServerFrame,
  encodingOfSubprotocol,
  type FrameEncoding,
  MAX_ACK_IDS,
  SUBPROTOCOL_JSON,
  SUBPROTOCOL_PROTO,
  subprotocolOf,
} from './device-codec.js';
export { Any } from './gen/google/protobuf/any.js';
export { ErrorInfo, Status } from './gen/google/rpc/status.js';
export { Event, EventBatch, EventType, NodeDelivery } from './gen/pushd/v1/bus.js';
export { Message, MessageType, Platform, platformFromJSON, platformToJSON } from './gen/pushd/v1/common.js';
export {
  Ack,
  ClientFrame,
  Connected,
  Deliver,
  Ping,
  Pong,
  PushMessage,
  Register,
  Registered,
  ServerError,
  ServerFrame,
  Unregister,
  Unregistered,
} from './gen/pushd/v1/device.js';
export {
  Audience,
  DispatchServiceClient,
  type DispatchServiceServer,
  DispatchServiceService,
  FetchPendingRequest,
  FetchPendingResponse,
  GetPushRequest,
  GetPushResponse,
  PushRecord,
  PushRequest,
  PushResponse,
  PushStatus,
  pushStatusToJSON,
} from './gen/pushd/v1/dispatch.js';
export {
  App,
  AuthenticateDeviceRequest,
  AuthenticateDeviceResponse,
  BindAccountRequest,
  BindAccountResponse,
  CountDevicesRequest,
  CountDevicesResponse,
  CreateAppRequest,
  CreateAppResponse,
  Device,
  GetDeviceRequest,
  GetDeviceResponse,
  ListAccountTokensRequest,
  ListAccountTokensResponse,
  RegisterDeviceRequest,
  RegisterDeviceResponse,
  RegistryServiceClient,
  type RegistryServiceServer,
  RegistryServiceService,
  UnbindAccountRequest,
  UnbindAccountResponse,
  UnregisterDeviceRequest,
  UnregisterDeviceResponse,
  VerifyAppRequest,
  VerifyAppResponse,
} from './gen/pushd/v1/registry.js';
export {
  GetPushStatsRequest,
  GetPushStatsResponse,
  PushStats,
  StatsServiceClient,
  type StatsServiceServer,
  StatsServiceService,
} from './gen/pushd/v1/stats.js';
export {
  AddTagsRequest,
  AddTagsResponse,
  ListTagsRequest,
  ListTagsResponse,
  RemoveTagsRequest,
  RemoveTagsResponse,
  TagServiceClient,
  type TagServiceServer,
  TagServiceService,
} from './gen/pushd/v1/tag.js';
