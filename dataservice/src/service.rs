//! The `DataService` gRPC service: a thin adapter onto [`DataNode`].

use std::sync::Arc;

use shoal_proto::data as pb;
use shoal_proto::data::data_service_server::DataService;
use tonic::{Request, Response, Status, Streaming};

use crate::node::DataNode;

pub struct DataServiceApi {
    node: Arc<DataNode>,
}

impl DataServiceApi {
    pub fn new(node: Arc<DataNode>) -> DataServiceApi {
        DataServiceApi { node }
    }
}

#[tonic::async_trait]
impl DataService for DataServiceApi {
    async fn write(&self, request: Request<pb::WriteRequest>) -> Result<Response<pb::WriteReply>, Status> {
        self.node.write(request.into_inner()).await.map(Response::new)
    }

    async fn read(&self, request: Request<pb::ReadRequest>) -> Result<Response<pb::ReadReply>, Status> {
        self.node.read(request.into_inner()).await.map(Response::new)
    }

    async fn sync(&self, request: Request<pb::SyncRequest>) -> Result<Response<pb::SyncReply>, Status> {
        self.node.sync(request.into_inner()).await.map(Response::new)
    }

    async fn truncate(&self, request: Request<pb::TruncateRequest>) -> Result<Response<pb::TruncateReply>, Status> {
        self.node.truncate(request.into_inner()).await.map(Response::new)
    }

    async fn copy_chunk(
        &self,
        request: Request<Streaming<pb::ChunkCopy>>,
    ) -> Result<Response<pb::ChunkCopyReply>, Status> {
        self.node.receive_copy(request.into_inner()).await.map(Response::new)
    }

    async fn list_chunks(
        &self,
        request: Request<pb::ListChunksRequest>,
    ) -> Result<Response<pb::ListChunksReply>, Status> {
        self.node.list_chunks(request.into_inner()).await.map(Response::new)
    }

    async fn drop(&self, request: Request<pb::DropRequest>) -> Result<Response<pb::DropReply>, Status> {
        self.node.drop_chunks(request.into_inner()).await.map(Response::new)
    }

    async fn stats(&self, _request: Request<pb::StatsRequest>) -> Result<Response<pb::StatsReply>, Status> {
        self.node.stats().await.map(Response::new)
    }
}
